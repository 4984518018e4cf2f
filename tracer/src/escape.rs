//! Untrusted text made safe to print. Rule comments, chain and interface
//! names, BGP hostnames and shutdown messages are written by whoever can
//! change the node's rules or talk to it: raw escape sequences, C1 controls
//! or bidi overrides in them could rewrite a terminal or disguise a line.
//! Every such string passes through [`visible`] where it enters lbpath, so
//! text and JSON output show the characters as escapes (`\x1b`, `\u202e`)
//! instead of obeying them.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as is: controls (C0 with newline
/// and tab, DEL, C1), bidi and other invisible formatting characters, line
/// and paragraph separators.
fn hazardous(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0x9f).contains(&u)
        || u == 0x061c
        || u == 0x180e
        || (0x200b..=0x200f).contains(&u)
        || (0x2028..=0x202e).contains(&u)
        || (0x2060..=0x206f).contains(&u)
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
}

/// `s` with every hazardous character written as an escape.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hazardous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && hazardous(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if hazardous(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// In place, for the fields of parsed records.
pub fn sanitize(s: &mut String) {
    if let Cow::Owned(v) = visible(s) {
        *s = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_characters_become_visible() {
        assert_eq!(visible("default/web:http"), "default/web:http");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
        assert_eq!(visible("a\x1b[31mb\x07"), "a\\x1b[31mb\\x07");
        assert_eq!(visible("x\u{85}y\u{9b}z"), "x\\u0085y\\u009bz");
        assert_eq!(visible("evil\u{202e}txt"), "evil\\u202etxt");
        assert_eq!(visible("two\nlines\ttab"), "two\\nlines\\ttab");
        assert_eq!(
            visible("zero\u{200b}width\u{2028}"),
            "zero\\u200bwidth\\u2028"
        );
        // Printable non-ASCII stays.
        assert_eq!(visible("café ✔ 服务"), "café ✔ 服务");
        let mut s = String::from("\x1bX");
        sanitize(&mut s);
        assert_eq!(s, "\\x1bX");
    }
}
