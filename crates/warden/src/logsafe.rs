//! Peer-supplied strings in log lines (SPEC §9: "control characters in peer-supplied strings
//! are escaped").
//!
//! A client id, user name, topic, authentication method or certificate identity is chosen by
//! whoever connects. Logged raw through a `%` (Display) field, a `\n` in it starts a forged log
//! line ("x\nFORGED INFO warden: connection accepted …") and an ESC drives the operator's
//! terminal. [`Escaped`] writes such a value with every control character (`char::is_control`:
//! C0, DEL, C1) escaped — `\n`, `\r`, `\t` by name, the others as `\u{1b}` — and the Unicode
//! line/paragraph separators and bidirectional-override characters too (they reorder or break
//! a line in a viewer). Everything else, backslashes included, is written as it is, so an
//! ordinary value reads the same. Use it for every log field fed from peer data:
//!
//! ```ignore
//! info!(client_id = %Escaped(&connect.client_id), principal = %Escaped(&principal), "…");
//! ```
//!
//! Plain `&str` fields (`client_id,` without a sigil) and `?` (Debug) fields are already quoted
//! and escaped by the formatter; the `%` ones are the ones that need this. The binary's text log
//! formatter also escapes control characters in every field as a second line of defence
//! ([`escaping_fields`]); the JSON format's string escaping covers them there.

use std::fmt::{self, Display, Write};

/// `T` displayed with control characters escaped (see the module documentation).
#[derive(Clone, Copy)]
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaper(f), "{}", self.0)
    }
}

impl<T: Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

/// Must `c` be escaped in a log line?
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes through to `W`, escaping what [`unsafe_char`] picks.
pub struct Escaper<W>(pub W);

impl<W: Write> Write for Escaper<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(unsafe_char) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// `s` with control characters escaped, as a `String` (for the rare place a `String` is needed;
/// in log fields prefer `%Escaped(s)`, which does not allocate).
pub fn escape(s: &str) -> String {
    Escaped(s).to_string()
}

/// A field formatter for the text log (tracing-subscriber `fmt`) that escapes control
/// characters in every field and in the message: whatever a call site forgot, no field can
/// start a new line or send a terminal escape.
pub fn escaping_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" {
            write!(Escaper(w), "{value:?}")
        } else {
            write!(w, "{field}=")?;
            write!(Escaper(w), "{value:?}")
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escape("plain/topic#+ ü 日本 \\n"), "plain/topic#+ ü 日本 \\n");
        assert_eq!(escape("x\nFORGED INFO warden: connection accepted"), "x\\nFORGED INFO warden: connection accepted");
        assert_eq!(escape("a\r\tb"), "a\\r\\tb");
        assert_eq!(escape("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape("\0\u{7f}\u{85}\u{9b}"), "\\u{0}\\u{7f}\\u{85}\\u{9b}");
        assert_eq!(escape("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
        assert_eq!(escape(""), "");
        // Any Display value, e.g. a principal.
        assert_eq!(Escaped(format_args!("user:{}", "m\nx")).to_string(), "user:m\\nx");
        // Escaping is idempotent on its own output: no control character is left.
        let once = escape("\u{1b}\n\u{9f}");
        assert_eq!(escape(&once), once);
        assert!(!once.chars().any(unsafe_char));
    }

    #[test]
    fn the_text_log_formatter_escapes_every_field() {
        let buf = warden_testkit::LogBuf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .fmt_fields(escaping_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let raw = "x\nFORGED \u{1b}[2J";
            tracing::info!(client_id = %raw, user = raw, "line\nbreak");
        });
        let out = buf.text();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains("line\\nbreak client_id=x\\nFORGED \\u{1b}[2J user=\"x\\nFORGED \\u{1b}[2J\""), "{out}");
    }
}
