//! The log output: every logged value escaped, colours only on a terminal.
//!
//! Provider-supplied text (a WeChat v2 `return_msg`, a rejection reason quoting the body,
//! a handler's log line) ends up in log fields. Written raw, a newline in it starts a
//! forged log line, and an escape code rewrites the operator's terminal. The text format
//! therefore writes every field of events and spans, and the message, through
//! [`EscapedFields`], which lets no control character through: `\n`, `\r` and `\t` become
//! those two-character escapes, every other control character (C0, DEL, C1), the Unicode
//! line and paragraph separators and the bidirectional overrides become `\u{1b}` (Rust's
//! escape syntax). Everything else reads as tracing-subscriber's default format did:
//! `%` (Display) values unquoted, strings and `?` (Debug) values in their Debug form
//! (quoted), the message as plain text. A backslash is not escaped, so `\n` in the log may
//! also be those two characters as they were sent: the point is that one event stays one
//! line with no escape codes in it, not that the text can be decoded back.
//!
//! The JSON format (`--log-format json`) escapes control characters itself.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::Subscriber;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the process's log output: what `RUST_LOG` selects (default `info`) to stderr,
/// as text lines ([`text_layer`]) or JSON lines.
pub fn init(json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(json_layer()).init();
    } else {
        registry.with(text_layer()).init();
    }
}

/// Text lines to stderr, every value escaped ([`EscapedFields`]), coloured only when
/// stderr is a terminal ([`stderr_colours`]).
pub fn text_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colours())
        .fmt_fields(EscapedFields)
}

/// JSON lines to stderr (JSON escapes control characters itself).
pub fn json_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .json()
}

/// Whether the text log may use colours: only on a terminal (a file, a pipe or journald
/// would keep the escape codes), and not when `NO_COLOR` is set (<https://no-color.org>).
pub fn stderr_colours() -> bool {
    colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The rule of [`stderr_colours`]: a terminal, and `NO_COLOR` unset or empty.
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Formats the fields of events and spans like tracing-subscriber's default, with every
/// control character escaped (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes `name=value` pairs separated by spaces (the message without its name).
struct FieldWriter<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // The `log` crate's metadata, which the event formatter shows by itself.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.result = self.write_field(name, value);
        self.first = false;
    }

    fn write_field(&mut self, name: &str, value: fmt::Arguments<'_>) -> fmt::Result {
        if !self.first {
            self.writer.write_char(' ')?;
        }
        if name != "message" {
            // Names come from the code (`r#type` is the field `type`), never from input.
            let name = name.strip_prefix("r#").unwrap_or(name);
            if self.writer.has_ansi_escapes() {
                // As the default format styles them: italic name, dimmed `=`.
                write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
            } else {
                write!(self.writer, "{name}=")?;
            }
        }
        Escaping(&mut self.writer).write_fmt(value)
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, format_args!("{value}"));
        } else {
            self.field(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%` values arrive here too, wrapped so that their Debug is their Display; the
        // message is `format_args!` output, whose Debug is its text.
        self.field(field, format_args!("{value:?}"));
    }
}

/// A [`fmt::Write`] that escapes what [`needs_escape`] names on its way through.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            self.0.write_str(&s[plain..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

/// Characters that end a line, move the cursor, start an escape sequence or reorder
/// what a terminal shows: C0 and C1 controls and DEL, U+2028/U+2029 (line and paragraph
/// separators, line ends to some log viewers), and the bidirectional embeddings,
/// overrides and isolates (which can make a line read as something else).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A log destination the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// What a real subscriber with [`EscapedFields`] writes while `log` runs.
    fn logged(ansi: bool, log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buffer.clone())
            .with_ansi(ansi)
            .fmt_fields(EscapedFields);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("log is UTF-8")
    }

    /// A provider's text that tries to forge a line and paint the terminal.
    const FORGED: &str =
        "FAIL\n2026-01-01T00:00:00Z  INFO forged\r\x1b[31mred\x1b[0m\t\u{85}\u{2028}\u{202e}";

    #[test]
    fn provider_text_stays_on_one_line_without_escape_codes() {
        let out = logged(false, || {
            let span = tracing::info_span!("notification", order = %FORGED);
            let _entered = span.enter();
            tracing::warn!(reason = %FORGED, text = FORGED, debug = ?FORGED, "rejected: {}", FORGED);
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        for raw in ['\x1b', '\r', '\t', '\u{85}', '\u{2028}', '\u{202e}'] {
            assert!(!out.contains(raw), "{raw:?} in {out:?}");
        }
        // The span field, the message, and the three field kinds: each escaped, in place.
        assert_eq!(
            out.matches("\\n2026-01-01T00:00:00Z  INFO forged").count(),
            5,
            "{out}"
        );
        assert!(
            out.contains("reason=FAIL\\n2026-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31mred\\u{1b}[0m\\t\\u{85}\\u{2028}\\u{202e}"),
            "{out}"
        );
        assert!(
            out.contains("rejected: FAIL\\n2026-01-01T00:00:00Z"),
            "{out}"
        );
    }

    #[test]
    fn colours_style_the_line_never_the_values() {
        let out = logged(true, || tracing::warn!(reason = %FORGED, "rejected"));
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains('\x1b'), "the level is coloured: {out:?}");
        assert!(!out.contains("\x1b[31m"), "{out:?}");
        assert!(out.contains("\\u{1b}[31mred"), "{out:?}");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(colours(true, Some(OsStr::new(""))));
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None));
    }

    #[test]
    fn plain_values_read_as_before() {
        let out = logged(false, || {
            tracing::info!(listen = %"127.0.0.1:8080", id = 7, r#type = "goods", ok = true, "paynotify serving");
        });
        assert!(
            out.contains(r#"paynotify serving listen=127.0.0.1:8080 id=7 type="goods" ok=true"#),
            "{out}"
        );
        assert!(out.ends_with('\n') && out.lines().count() == 1, "{out}");
    }
}
