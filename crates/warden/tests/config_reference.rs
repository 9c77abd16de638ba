//! docs/configuration.md lists every configuration key (issue 19: "a configuration reference
//! page listing every key … checked against the code by a test, so it cannot drift"). The keys
//! are read from the configuration structs' source (the `Deserialize` structs of config.rs and
//! lookup.rs); each must have its row in its section's table. After adding a key, run
//! `scripts/gen-config-reference`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

/// The TOML table each struct is read from (as the page's headings name them).
const SECTIONS: &[(&str, &str)] = &[
    ("[[listener]]", "RawListener"),
    ("[auth]", "RawAuth"),
    ("[auth.jwt]", "JwtConfig"),
    ("[auth.http]", "LookupConfig"),
    ("[identity]", "RawIdentity"),
    ("[http]", "RawHttp"),
    ("[oauth]", "RawOAuth"),
    ("[[oauth.client]]", "OAuthClientConfig"),
    ("[authz]", "RawAuthz"),
    ("[limits]", "Limits"),
    ("[limits] auth_fail_ban = { … }", "AuthFailBan"),
    ("[limits] auth_fail_backoff = { … }", "AuthFailBackoff"),
    ("[persistence]", "PersistenceConfig"),
    ("[log]", "RawLog"),
    ("[cluster]", "RawCluster"),
    ("[enroll]", "RawEnroll"),
    ("[watch]", "WatchConfig"),
];

/// Structs that deserialize something other than a table of the file (helpers of the secret
/// resolution pass, the top level whose tables are the sections).
const NOT_SECTIONS: &[&str] = &[
    "RawConfig",
    "SecretKeys",
    "AuthSecretKeys",
    "JwtSecretKeys",
    "LookupSecretKeys",
    "HttpSecretKeys",
    "OAuthSecretKeys",
    "ClientSecretKeys",
    "ClusterSecretKeys",
];

/// `(struct name, keys)` of every struct deriving `Deserialize` in `src` (a key is the field's
/// name or its `#[serde(rename = "…")]`).
fn deserialize_structs(src: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = src.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if l.starts_with("#[derive(") && l.contains("Deserialize") {
            // The struct line follows its attributes.
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim().starts_with("#[") {
                j += 1;
            }
            let head = lines.get(j).map(|s| s.trim()).unwrap_or("");
            let head = ["pub(super) ", "pub(crate) ", "pub "].iter().find_map(|p| head.strip_prefix(p)).unwrap_or(head);
            if let Some(rest) = head.strip_prefix("struct ").filter(|r| r.ends_with('{')) {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                let mut keys = Vec::new();
                let mut rename = None;
                j += 1;
                while j < lines.len() && lines[j] != "}" {
                    let f = lines[j].trim();
                    if f.starts_with("#[") {
                        if let Some(r) = f.split("rename = \"").nth(1) {
                            rename = r.split('"').next().map(str::to_owned);
                        }
                    } else if !f.starts_with("//") {
                        let f =
                            ["pub(super) ", "pub(crate) ", "pub "].iter().find_map(|p| f.strip_prefix(p)).unwrap_or(f);
                        if let Some((field, _)) = f.split_once(':') {
                            if !field.is_empty() && field.chars().all(|c| c.is_alphanumeric() || c == '_') {
                                keys.push(rename.take().unwrap_or_else(|| field.to_owned()));
                            }
                        }
                    }
                    j += 1;
                }
                out.push((name, keys));
            }
            i = j;
        }
        i += 1;
    }
    out
}

#[test]
fn the_configuration_reference_lists_every_key_in_its_section() {
    let mut structs = deserialize_structs(include_str!("../src/config/mod.rs"));
    structs.extend(deserialize_structs(include_str!("../src/config/lookup.rs")));
    structs.extend(deserialize_structs(include_str!("../src/config/cluster.rs")));
    structs.extend(deserialize_structs(include_str!("../src/config/enroll.rs")));
    structs.extend(deserialize_structs(include_str!("../src/config/watch.rs")));
    let page = include_str!("../../../docs/configuration.md");
    for (name, keys) in &structs {
        if NOT_SECTIONS.contains(&name.as_str()) {
            continue;
        }
        let Some((section, _)) = SECTIONS.iter().find(|(_, s)| s == name) else {
            // A struct read from a value, not a table (an enum's helper, say) has no keys here.
            assert!(!name.starts_with("Raw"), "{name} deserializes a table the reference does not know: add it");
            continue;
        };
        let heading = format!("## `{section}`");
        let start = page.find(&heading).unwrap_or_else(|| panic!("docs/configuration.md has no {heading}"));
        let body = &page[start + heading.len()..];
        let body = &body[..body.find("\n## ").unwrap_or(body.len())];
        for key in keys {
            assert!(
                body.contains(&format!("| `{key}` |")),
                "docs/configuration.md, {section}: no row for `{key}` (run scripts/gen-config-reference)"
            );
        }
    }
    // The parser found the tables (a parser that finds nothing would pass the loop above).
    for (_, s) in SECTIONS {
        let keys = structs.iter().find(|(n, _)| n == s).map(|(_, k)| k.len()).unwrap_or(0);
        assert!(keys > 0, "no keys found for {s}");
    }
    assert!(structs.iter().any(|(n, k)| n == "Limits" && k.len() > 30), "every [limits] key is read");
}
