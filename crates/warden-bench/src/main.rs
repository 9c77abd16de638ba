//! `warden-bench`: an MQTT load generator that targets any broker by address and prints one
//! JSON line per run, and `warden-bench report`, which turns those lines into the tables of
//! `docs/PERFORMANCE.md`. See `scripts/bench-compare` for the side-by-side comparison.
//!
//! ```sh
//! cargo run --release -p warden-bench -- fan-in --port 1883 --pid $(pidof warden) --qos 1
//! ```
//!
//! # Layout
//! - `main.rs`: the command line (one subcommand per scenario), address and option parsing;
//!   `anyhow` for errors, as in any binary's edge (the bench is a binary only).
//! - `traffic`: the publish/subscribe scenarios (fan-in, fan-out, pairs, latency).
//! - `idle`: idle connections and the broker's RSS per connection.
//! - `fleet`: many quiet devices publishing QoS 1 telemetry to backends, commands back (issue 24).
//! - `tls`: TLS handshake rate and the broker's CPU per handshake.
//! - `botnet`: legitimate clients measured while many addresses attack the broker.
//! - `compromised`: one device of a fleet turns rogue; time until the behaviour watch
//!   quarantines it, and the neighbours' losses (issue 23).
//! - `authz`: the cost of one authorization decision, in memory (no broker).
//! - `proto`: the MQTT client side (connect, subscribe, pre-encoded PUBLISH batches, framing).
//! - `stats`: the latency histogram and `/proc` readings (CPU, RSS).
//! - `output`: the one JSON line a run prints; `report`: those lines into Markdown tables.

// Workspace lints of issue 18, enabled per crate until every crate is clean.

mod authz;
mod botnet;
mod compromised;
mod fleet;
mod floor;
mod idle;
mod output;
mod proto;
mod report;
mod stats;
mod tls;
mod traffic;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};
use mqtt_codec::{Protocol, QoS};

#[derive(Parser, Debug)]
#[command(name = "warden-bench", about = "MQTT broker load generator (one JSON line per run)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// P publishers -> 1 subscriber on a wildcard filter.
    FanIn {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        /// Publishers.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
    },
    /// 1 publisher -> N subscribers of the same topic.
    FanOut {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        /// Subscribers.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
    },
    /// 1 publisher -> N members of one shared subscription (`$share/wb/...`), each message to one.
    Shared {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        /// Members of the shared group.
        #[arg(long, default_value_t = 4)]
        members: usize,
    },
    /// N publisher/subscriber pairs, each on its own topic.
    Pairs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        /// Pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
    },
    /// 1 publisher at a fixed rate (--rate, default 1000 msg/s) -> 1 subscriber; latency percentiles.
    Latency {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
    },
    /// Not a load: the fleet scenario's floor, a one-thread MQTT 3.1.1 forwarder that does only
    /// what every broker must (read, acknowledge, match, forward; no security, no session), to
    /// run the fleet generator against (docs/PERFORMANCE.md, "The floor"). Runs until killed.
    FloorBroker {
        /// Address to listen on (port 0: any; the address is printed on stderr).
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: std::net::SocketAddr,
    },
    /// C idle connections: connects/s and broker RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connection attempts in flight at once (keep it at or below the broker's listen backlog,
        /// Mosquitto's is 100: beyond, SYNs are dropped and retried a second later).
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Seconds to hold the connections before reading the broker's memory.
        #[arg(long, default_value_t = 1.0)]
        hold: f64,
        /// Spread client sockets over this many source addresses 127.0.0.1.. (1: let the kernel choose).
        #[arg(long, default_value_t = 1)]
        source_addrs: u8,
        /// Connect over TLS 1.3, verifying the server certificate against this CA (PEM).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Client certificate chain (PEM) for mutual TLS (with --key and --tls-ca).
        #[arg(long, requires_all = ["key", "tls_ca"])]
        cert: Option<PathBuf>,
        /// Client private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Name the server certificate must carry (default: --host).
        #[arg(long, requires = "tls_ca")]
        server_name: Option<String>,
    },
    /// The behaviour watch's check: N devices at a baseline rate, device 0 turns rogue (probing
    /// new topics, --factor x its rate); time to its quarantine, neighbours' lost messages.
    /// The broker needs `[watch] enabled = true`, users --device-prefix0..N-1, and
    /// --username allowed to subscribe to `$warden/events/watch/#`.
    Compromised {
        #[command(flatten)]
        common: Common,
        /// Devices, each its own user (device 0 turns rogue).
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// QoS 1 messages per second per device.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Seconds of normal traffic (the baseline is learned meanwhile) before the turn.
        #[arg(long, default_value_t = 330.0)]
        learn: f64,
        /// The rogue's publish rate, as a multiple of --rate.
        #[arg(long, default_value_t = 50.0)]
        factor: f64,
        /// New topics the rogue probes per second.
        #[arg(long, default_value_t = 5.0)]
        probe_rate: f64,
        /// Seconds after the turn before the run gives up on the quarantine.
        #[arg(long, default_value_t = 15.0)]
        deadline: f64,
        /// Seconds the neighbours go on publishing after the quarantine.
        #[arg(long, default_value_t = 2.0)]
        after: f64,
        /// Device user names: this prefix and the device's index.
        #[arg(long, default_value = "device-")]
        device_prefix: String,
        /// The devices' password (default: --password).
        #[arg(long)]
        device_password: Option<String>,
    },
    /// N quiet devices publish QoS 1 telemetry to backends, commands back (issue 24).
    ///
    /// N devices (clean session, many loopback source addresses) publish QoS 1 telemetry
    /// to `devices/<id>/telemetry` at a low jittered rate and wait for each PUBACK; backends
    /// receive it (a `$share/backend/devices/+/telemetry` group and plain `devices/+/telemetry`
    /// subscribers, QoS 1); a backend sends QoS 1 commands to `devices/<id>/commands` of a subset.
    /// The ramp-up (connecting every device) is not measured; then a window of --duration
    /// seconds: delivered/s, lost, broker CPU-s per million delivered, publish-to-backend latency,
    /// command delivery, broker RSS at the end, connections held.
    Fleet {
        #[command(flatten)]
        common: Common,
        /// Devices (one connection each; the open-file limit is raised).
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Telemetry messages per second per device (a device's intervals are jittered).
        #[arg(long, default_value_t = 0.2)]
        rate: f64,
        /// Each interval is 1/--rate × (1 ± up to this fraction); first publications at uniform
        /// phases within the first interval.
        #[arg(long, default_value_t = 0.2)]
        jitter: f64,
        /// Seconds of the measured window.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Payload bytes (the first 20 carry the send time, the device index, a sequence number).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Members of the shared backend group `$share/backend/devices/+/telemetry` (0: none).
        #[arg(long, default_value_t = 2)]
        shared_members: usize,
        /// Plain backend subscribers of `devices/+/telemetry`.
        #[arg(long, default_value_t = 1)]
        plain_backends: usize,
        /// Fraction of the devices that receive commands (0: no commands).
        #[arg(long, default_value_t = 0.01)]
        command_fraction: f64,
        /// Seconds between two commands to the same commanded device.
        #[arg(long, default_value_t = 10.0)]
        command_interval: f64,
        /// Seconds a device waits for a PUBACK before counting the publication as unacknowledged.
        #[arg(long, default_value_t = 10.0)]
        ack_timeout: f64,
        /// Ramp-up: connection handshakes in flight at once (Mosquitto's listen backlog is 100).
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Ramp-up: connection attempts per second at most.
        #[arg(long, default_value_t = 2000.0)]
        connect_rate: f64,
        /// Loopback source addresses the devices spread over (127.0.1.1, 127.0.1.2, ...; 0: one
        /// per 1,000 devices), so that no source address runs out of ephemeral ports.
        #[arg(long, default_value_t = 0)]
        source_addrs: usize,
    },
    /// N TLS connections, C at a time: full handshake (no resumption), CONNECT/CONNACK,
    /// DISCONNECT, close; handshakes/s and broker CPU per handshake.
    TlsHandshakes {
        #[command(flatten)]
        common: Common,
        /// Connections to open (one after another, --concurrency at a time).
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// CA certificate (PEM) the server certificate is verified against.
        #[arg(long)]
        ca: PathBuf,
        /// Client certificate chain (PEM), for mutual TLS (with --key).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Client private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Name the server certificate must carry (default: --host).
        #[arg(long)]
        server_name: Option<String>,
        /// Offer TLS 1.2 too (default: TLS 1.3 only).
        #[arg(long)]
        tls12: bool,
        /// Reconnect storm: each of the --connections devices makes one full handshake, then
        /// this many reconnects resuming its session (scenario `tls-resume`; 0: full handshakes).
        #[arg(long, default_value_t = 0)]
        resume: usize,
    },
    /// Legitimate pairs at a fixed rate while attackers from many 127.0.x.y addresses flood
    /// connects, wrong passwords, slow CONNECTs and publishes and hold non-reading subscribers
    /// (or: one account fills memory; HTTP slowloris and hash flood); legitimate latency/loss,
    /// reconnect time, broker peak RSS and descriptors (--no-attack: the baseline).
    Botnet {
        #[command(flatten)]
        common: Common,
        /// Seconds the run lasts (legitimate traffic and attack alike).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Legitimate publisher/subscriber pairs.
        #[arg(long, default_value_t = 4)]
        pairs: usize,
        /// Messages per second per legitimate publisher (QoS 1).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Attacker tasks per attack kind (5 kinds).
        #[arg(long, default_value_t = 20)]
        attackers: usize,
        /// Loopback source addresses the attackers spread over (127.0.1.1 onwards).
        #[arg(long, default_value_t = 100)]
        source_addrs: usize,
        /// Payload bytes of the publish flood.
        #[arg(long, default_value_t = 1024)]
        flood_payload: usize,
        /// No attackers: the baseline to compare with.
        #[arg(long)]
        no_attack: bool,
        /// Attack kinds, comma-separated: connect (valid CONNECT, then close), password (wrong
        /// password), slow (CONNECT never finished), flood (publish flood), stall (subscribers to
        /// everything that never read), fill-memory (one account: offline persistent sessions on
        /// its own topic and a QoS 1 flood to them), http-slowloris (partial HTTP requests, wrong
        /// OAuth client secrets and admin tokens against --http-port).
        #[arg(long, value_delimiter = ',', default_value = "connect,password,slow,flood,stall")]
        attacks: Vec<String>,
        /// fill-memory: the attacker's account (default: --username).
        #[arg(long)]
        attacker_username: Option<String>,
        /// fill-memory: its password (default: --password).
        #[arg(long)]
        attacker_password: Option<String>,
        /// fill-memory: offline persistent sessions of the account.
        #[arg(long, default_value_t = 20)]
        fill_sessions: usize,
        /// fill-memory: publishing connections of the account.
        #[arg(long, default_value_t = 2)]
        fill_publishers: usize,
        /// fill-memory: payload bytes per message.
        #[arg(long, default_value_t = 16384)]
        fill_payload: usize,
        /// fill-memory: megabytes (MiB) published at most.
        #[arg(long, default_value_t = 100)]
        fill_mib: u64,
        /// http-slowloris: the broker's HTTP listener port (on --host); without it the attack
        /// is reported as not applicable (Mosquitto has no HTTP listener).
        #[arg(long)]
        http_port: Option<u16>,
        /// http-slowloris: partial requests held per attacker task.
        #[arg(long, default_value_t = 50)]
        slowloris_conns: usize,
        /// http-slowloris: the OAuth client id the wrong secrets are sent for.
        #[arg(long, default_value = "bench-client")]
        oauth_client: String,
    },
    /// The cost of one authorization decision (no broker): ACL file, policy store and token
    /// scopes of N rules, topics of 3-8 levels; one JSON line per case (ns per decision).
    Authz {
        /// Rules per source (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        rules: Vec<usize>,
        /// Topic levels (comma-separated, 3 to 8).
        #[arg(long, value_delimiter = ',', default_value = "3,5,8")]
        levels: Vec<usize>,
        /// Sources: acl, store, scopes, all (the three together).
        #[arg(long, value_delimiter = ',', default_value = "acl,store,scopes,all")]
        sources: Vec<String>,
        /// Milliseconds per timed batch.
        #[arg(long, default_value_t = 10)]
        batch_ms: u64,
        /// Timed batches per case (the median and the fastest are reported).
        #[arg(long, default_value_t = 7)]
        batches: usize,
        /// Print the generated ACL file of this many rules and exit.
        #[arg(long)]
        print_acl: Option<usize>,
    },
    /// Turn JSON lines from earlier runs into Markdown tables (medians and ratios).
    Report {
        /// Files of JSON lines (one run per line).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The broker label the others are compared with.
        #[arg(long, default_value = "warden")]
        reference: String,
    },
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Broker process id: report its CPU seconds per million delivered messages and its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Traffic scenarios: subscribers connect to this port instead of --port (another node of
    /// a cluster: every message crosses between nodes).
    #[arg(long)]
    sub_port: Option<u16>,
    /// Traffic scenarios: more process ids whose CPU counts with the broker's (the other nodes
    /// of a cluster, its NATS servers), comma-separated. RSS stays --pid's.
    #[arg(long, value_delimiter = ',')]
    also_pid: Vec<u32>,
    /// Broker label in the output (default: host:port).
    #[arg(long)]
    label: Option<String>,
    /// Case name in the output, grouping runs in `report` (default: derived from the options).
    #[arg(long)]
    case: Option<String>,
    /// User name sent in CONNECT.
    #[arg(long)]
    username: Option<String>,
    /// Password sent in CONNECT.
    #[arg(long)]
    password: Option<String>,
    /// Speak MQTT 5.0 (default: 3.1.1).
    #[arg(long)]
    mqtt5: bool,
    /// Persistent sessions (v3 clean session 0, v5 session expiry 300 s): QoS 1 messages to
    /// them are kept by the broker's store before they are acknowledged.
    #[arg(long)]
    persistent: bool,
    /// Generator threads (tokio workers; 1 = a single-threaded runtime).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A run ends this many seconds after the last delivery once publishing is over (not counted
    /// in the rates).
    #[arg(long, default_value_t = 2.0)]
    quiet_timeout: f64,
    /// Seconds to wait for a CONNACK or SUBACK.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
}

/// Traffic options.
#[derive(Args, Debug, Clone)]
struct Load {
    /// QoS of publications and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Payload bytes (the first 8 carry the send time when there are at least 8).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per publisher (instead of --duration).
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Seconds of publishing (default 5 without --count).
    #[arg(long)]
    duration: Option<f64>,
    /// Total publish rate, msg/s over all publishers (default: as fast as the broker takes them;
    /// latency: 1000).
    #[arg(long)]
    rate: Option<f64>,
    /// QoS 1: unacknowledged PUBLISH packets per publisher at most (capped by the broker's
    /// Receive Maximum).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Most messages per write.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// End-to-end flow control: a publisher stays at most this many messages ahead of the newest
    /// of its messages that all its subscribers received, so that a broker slower than the
    /// publishers is measured at its sustainable rate instead of piling up a backlog (0: no
    /// limit; needs payloads of at least 20 bytes).
    #[arg(long, default_value_t = 2000)]
    backlog: u64,
}

impl Common {
    fn client_opts(&self) -> Result<proto::ClientOpts> {
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow!("cannot resolve {}", self.host))?;
        Ok(proto::ClientOpts {
            addr,
            protocol: if self.mqtt5 { Protocol::V5 } else { Protocol::V311 },
            username: self.username.clone(),
            password: self.password.clone(),
            keep_alive: 300,
            source: None,
            handshake_timeout: Duration::from_secs_f64(self.handshake_timeout),
            persistent: self.persistent,
        })
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    })
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let (common, scenario) = match cli.command {
        Command::Report { inputs, reference } => {
            print!("{}", report::render(&inputs, &reference)?);
            return Ok(());
        }
        Command::Authz { rules, levels, sources, batch_ms, batches, print_acl } => {
            if let Some(n) = print_acl {
                print!("{}", authz::acl_text(n)?);
                return Ok(());
            }
            let batch = Duration::from_millis(batch_ms.max(1));
            return authz::run(&authz::Params { sizes: rules, levels, batch, batches, sources });
        }
        Command::FanIn { common, load, publishers } => {
            (common, Scenario::Traffic(traffic::Plan::fan_in(publishers), load))
        }
        Command::FanOut { common, load, subscribers } => {
            (common, Scenario::Traffic(traffic::Plan::fan_out(subscribers), load))
        }
        Command::Shared { common, load, members } => (common, Scenario::Traffic(traffic::Plan::shared(members), load)),
        Command::Pairs { common, load, pairs } => (common, Scenario::Traffic(traffic::Plan::pairs(pairs), load)),
        Command::Latency { common, mut load } => {
            load.rate.get_or_insert(1000.0);
            (common, Scenario::Traffic(traffic::Plan::latency(), load))
        }
        Command::Botnet {
            common,
            duration,
            pairs,
            rate,
            attackers,
            source_addrs,
            flood_payload,
            no_attack,
            attacks,
            attacker_username,
            attacker_password,
            fill_sessions,
            fill_publishers,
            fill_payload,
            fill_mib,
            http_port,
            slowloris_conns,
            oauth_client,
        } => {
            if let Some(bad) = attacks.iter().find(|k| !botnet::KINDS.contains(&k.as_str())) {
                bail!("unknown attack kind {bad:?} ({})", botnet::KINDS.join(", "));
            }
            if !(duration > 0.0 && rate > 0.0 && pairs > 0) {
                bail!("--duration, --rate and --pairs must be positive");
            }
            let attackers = if no_attack { 0 } else { attackers };
            let fill = botnet::FillMemory {
                username: attacker_username.or_else(|| common.username.clone()),
                password: attacker_password.or_else(|| common.password.clone()),
                sessions: fill_sessions,
                publishers: fill_publishers,
                payload: fill_payload.max(8),
                bytes: fill_mib.saturating_mul(1024 * 1024),
            };
            let http_addr = match http_port {
                Some(port) => Some(
                    (common.host.as_str(), port)
                        .to_socket_addrs()?
                        .next()
                        .ok_or_else(|| anyhow!("cannot resolve {}", common.host))?,
                ),
                None => None,
            };
            let http = botnet::HttpAttack { addr: http_addr, slowloris_conns, oauth_client };
            let p = botnet::Params {
                duration,
                pairs,
                rate,
                attackers,
                source_addrs,
                flood_payload,
                kinds: attacks,
                fill,
                http,
            };
            (common, Scenario::Botnet(p))
        }
        Command::TlsHandshakes { common, connections, concurrency, ca, cert, key, server_name, tls12, resume } => {
            let server_name = server_name.unwrap_or_else(|| common.host.clone());
            let client_cert = cert.zip(key);
            let p = tls::Params { connections, concurrency, ca, client_cert, server_name, tls12, resume };
            (common, Scenario::Tls(p))
        }
        Command::Compromised {
            common,
            devices,
            rate,
            learn,
            factor,
            probe_rate,
            deadline,
            after,
            device_prefix,
            device_password,
        } => {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if devices < 2
                || !positive(rate)
                || !positive(factor)
                || !positive(deadline)
                || !learn.is_finite()
                || learn < 0.0
            {
                bail!("compromised: --devices >= 2, and --rate, --factor, --deadline > 0, --learn >= 0");
            }
            let p = compromised::Params {
                devices,
                rate,
                learn,
                factor,
                probe_rate: probe_rate.max(0.0),
                deadline,
                after: after.max(0.0),
                prefix: device_prefix,
                device_password,
            };
            (common, Scenario::Compromised(p))
        }
        Command::Fleet {
            common,
            devices,
            rate,
            jitter,
            duration,
            payload,
            shared_members,
            plain_backends,
            command_fraction,
            command_interval,
            ack_timeout,
            concurrency,
            connect_rate,
            source_addrs,
        } => {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if devices == 0 || !positive(rate) || !positive(duration) || !positive(connect_rate) {
                bail!("--devices, --rate, --duration and --connect-rate must be positive");
            }
            if !positive(command_interval) || !positive(ack_timeout) || !(0.0..=1.0).contains(&jitter) {
                bail!("--command-interval and --ack-timeout must be positive, --jitter within 0..1");
            }
            if !(0.0..=1.0).contains(&command_fraction) {
                bail!("--command-fraction must be within 0..1");
            }
            if payload < proto::SEQ_PAYLOAD {
                bail!("--payload must be at least {} bytes (send time, device, sequence)", proto::SEQ_PAYLOAD);
            }
            let p = fleet::Params {
                devices,
                rate,
                jitter,
                duration: Duration::from_secs_f64(duration),
                payload,
                shared_members,
                plain_backends,
                command_fraction,
                command_interval,
                ack_timeout: Duration::from_secs_f64(ack_timeout),
                concurrency,
                connect_rate,
                source_addrs,
                quiet: Duration::from_secs_f64(common.quiet_timeout),
            };
            (common, Scenario::Fleet(p))
        }
        Command::FloorBroker { bind } => return floor::run(bind),
        Command::Idle { common, connections, concurrency, hold, source_addrs, tls_ca, cert, key, server_name } => {
            let tls = match tls_ca {
                None => None,
                Some(ca) => {
                    let server_name = server_name.unwrap_or_else(|| common.host.clone());
                    let client_cert = cert.zip(key);
                    let with_cert = client_cert.is_some();
                    let p = tls::Params {
                        connections,
                        concurrency,
                        ca,
                        client_cert,
                        server_name: server_name.clone(),
                        tls12: false,
                        resume: 0,
                    };
                    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls::client_config(&p)?));
                    let name = rustls::pki_types::ServerName::try_from(server_name)
                        .map_err(|e| anyhow::anyhow!("server name: {e}"))?;
                    Some((connector, name, with_cert))
                }
            };
            (common, Scenario::Idle(idle::Params { connections, concurrency, hold, source_addrs, tls }))
        }
    };
    let rt = runtime(common.threads)?;
    let out = match scenario {
        Scenario::Traffic(plan, load) => {
            if load.payload > 0 && load.payload < 8 {
                eprintln!("warden-bench: payloads under 8 bytes carry no timestamp: no latency figures");
            }
            let qos = if load.qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
            let duration = match (load.count, load.duration) {
                (Some(_), _) => None,
                (None, d) => Some(Duration::from_secs_f64(d.unwrap_or(5.0))),
            };
            if let Some(r) = load.rate {
                if r <= 0.0 {
                    bail!("--rate must be positive");
                }
            }
            let params = traffic::Params {
                qos,
                payload: load.payload,
                count: load.count,
                duration,
                rate: load.rate,
                inflight: load.inflight.max(1),
                batch: load.batch.max(1),
                backlog: load.backlog,
                quiet: Duration::from_secs_f64(common.quiet_timeout),
            };
            let opts = common.client_opts()?;
            let mut sub_opts = opts.clone();
            if let Some(port) = common.sub_port {
                sub_opts.addr.set_port(port);
            }
            let cpu = traffic::Processes { pid: common.pid, also: common.also_pid.clone() };
            rt.block_on(traffic::run(plan, params, opts, sub_opts, cpu))?
        }
        Scenario::Botnet(params) => {
            let opts = common.client_opts()?;
            if !matches!(opts.addr.ip(), IpAddr::V4(a) if a.is_loopback()) {
                bail!("botnet binds attackers to 127.0.x.y: it needs an IPv4 loopback broker address");
            }
            rt.block_on(botnet::run(params, opts, common.pid))?
        }
        Scenario::Fleet(params) => {
            let opts = common.client_opts()?;
            if !matches!(opts.addr.ip(), IpAddr::V4(a) if a.is_loopback()) {
                bail!("fleet binds devices to 127.x.y.z source addresses: it needs an IPv4 loopback broker address");
            }
            rt.block_on(fleet::run(params, opts, common.pid))?
        }
        Scenario::Tls(params) => rt.block_on(tls::run(params, common.client_opts()?, common.pid))?,
        Scenario::Compromised(params) => rt.block_on(compromised::run(params, common.client_opts()?, common.pid))?,
        Scenario::Idle(params) => {
            let mut opts = common.client_opts()?;
            if params.source_addrs > 1 && !matches!(opts.addr.ip(), IpAddr::V4(a) if a.is_loopback()) {
                bail!("--source-addrs needs an IPv4 loopback broker address");
            }
            opts.source = None;
            rt.block_on(idle::run(params, opts, common.pid))?
        }
    };
    let out = out.finish(common.label(), common.case.clone(), common.mqtt5);
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

enum Scenario {
    Traffic(traffic::Plan, Load),
    Idle(idle::Params),
    Tls(tls::Params),
    Botnet(botnet::Params),
    Fleet(fleet::Params),
    Compromised(compromised::Params),
}
