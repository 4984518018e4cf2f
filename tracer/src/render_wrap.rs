//! Fitting text lines to the terminal: a line longer than the width is
//! broken at spaces onto indented continuation lines, never inside a word
//! (a word longer than a line is left whole on a line of its own). Widths
//! are display columns, ANSI styling counting for none.

use unicode_width::UnicodeWidthChar;

/// Width for text output: the terminal's when stdout is one, else 80.
pub fn output_width() -> usize {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ only writes the winsize it is given.
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok && ws.ws_col >= 40 {
            return ws.ws_col as usize;
        }
    }
    80
}

/// Display columns of `s`, skipping ANSI escape sequences (lbpath's own
/// styling: untrusted text reaches here escaped).
pub fn columns(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        n += c.width().unwrap_or(0);
    }
    n
}

/// `line` (no newline) fitted to `width`: continuation lines start with
/// `indent` spaces. Runs of spaces inside a line (column alignment) stay,
/// except where the line breaks.
pub fn wrap(line: &str, width: usize, indent: usize) -> String {
    if columns(line) <= width {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 16);
    let mut col = 0;
    // Whether the current output line has a word past its indent.
    let mut has_word = false;
    let mut rest = line;
    while !rest.is_empty() {
        let spaces = rest.len() - rest.trim_start_matches(' ').len();
        let after = &rest[spaces..];
        let word_len = after.find(' ').unwrap_or(after.len());
        let word = &after[..word_len];
        let w = columns(word);
        if has_word && w > 0 && col + spaces + w > width {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent));
            col = indent;
        } else {
            out.extend(std::iter::repeat_n(' ', spaces));
            col += spaces;
        }
        out.push_str(word);
        col += w;
        has_word |= w > 0;
        rest = &after[word_len..];
    }
    out
}

/// Every line of `text` fitted, each with its own continuation indent
/// (`indent_of` a line).
pub fn wrap_lines(text: &str, width: usize, indent_of: impl Fn(&str) -> usize) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    for l in text.split_inclusive('\n') {
        let (body, nl) = match l.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (l, ""),
        };
        out.push_str(&wrap(body, width, indent_of(body)));
        out.push_str(nl);
    }
    out
}

/// The column where a line's text starts after its leading spaces and
/// `marker` (e.g. "hint: "), when it has that marker; else after the
/// spaces alone, plus `extra`.
pub fn hanging(line: &str, markers: &[&str], extra: usize) -> usize {
    let lead = line.len() - line.trim_start_matches(' ').len();
    let body = &line[lead..];
    for m in markers {
        if let Some(pos) = body.find(m) {
            return lead + columns(&body[..pos]) + columns(m);
        }
    }
    lead + extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_are_left_alone() {
        assert_eq!(wrap("  a  b", 80, 4), "  a  b");
        assert_eq!(wrap("", 10, 2), "");
    }

    #[test]
    fn long_lines_break_at_spaces_with_an_indent() {
        let line = "    hint: make the return path symmetric: route the client's network via eth0's gateway";
        let w = wrap(line, 40, 10);
        for l in w.lines() {
            assert!(columns(l) <= 40, "{l:?}");
        }
        let lines: Vec<&str> = w.lines().collect();
        assert_eq!(lines[0], "    hint: make the return path");
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.starts_with("          ") && !l[10..].starts_with(' '))
        );
        // Nothing lost or split: the words are the same.
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(words(&w), words(line));
    }

    #[test]
    fn a_word_is_never_split() {
        let long = "x".repeat(30);
        let w = wrap(&format!("ab {long} cd"), 20, 2);
        assert_eq!(w, format!("ab\n  {long}\n  cd"));
        // Even at the start: left whole, over the width.
        assert_eq!(wrap(&long, 10, 2), long);
    }

    #[test]
    fn alignment_spaces_stay_and_styling_has_no_width() {
        let line = "  +0.060ms  → DNAT       192.0.2.240:80 → 10.244.1.5:8080 by kube-proxy KUBE-SEP-AFGSLHOD2HFNCBX4 (default/web:http) [PREROUTING: ip nat chain PREROUTING (priority -100)]";
        let w = wrap(line, 80, 26);
        assert!(
            w.starts_with("  +0.060ms  → DNAT       192.0.2.240:80"),
            "{w}"
        );
        for l in w.lines() {
            assert!(columns(l) <= 80, "{l:?}");
        }
        assert!(w.lines().skip(1).all(|l| l.starts_with(&" ".repeat(26))));
        let red = "\x1b[31mDROPPED\x1b[0m";
        assert_eq!(columns(red), 7);
        let styled = format!("{red} {}", "word ".repeat(3).trim_end());
        assert_eq!(wrap(&styled, 22, 8), styled, "22 visible columns fit");
        assert_eq!(
            wrap(&styled, 21, 8),
            format!("{red} word word\n        word")
        );
    }

    #[test]
    fn wide_characters_count_twice() {
        assert_eq!(columns("服务"), 4);
        assert_eq!(columns("→ ✔"), 3);
        assert_eq!(wrap("ab 服务服务", 6, 1), "ab\n 服务服务");
    }

    #[test]
    fn each_line_its_own_indent() {
        let text = "  ✘ dropped on this node: a long reason\n    hint: do this and that\n";
        let w = wrap_lines(text, 20, |l| hanging(l, &["hint: "], 2));
        assert_eq!(
            w,
            "  ✘ dropped on this\n    node: a long\n    reason\n    hint: do this\n          and that\n"
        );
    }
}
