//! Reading a test binary's outcome from its output. The exit code alone is
//! not enough: a selector that matches nothing exits 0 having run nothing,
//! and that must count as a failure.

/// libtest's last "test result:" line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub ok: bool,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

/// "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 9 filtered
/// out; finished in 3.21s" — the last such line, if any (a test's own output
/// comes before it).
pub fn parse_summary(output: &str) -> Option<Summary> {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("test result: "))?;
    let (status, counts) = line.split_once(". ")?;
    let ok = match status {
        "ok" => true,
        "FAILED" => false,
        _ => return None,
    };
    let count = |what: &str| {
        counts.split(';').find_map(|part| {
            let (n, word) = part.trim().split_once(' ')?;
            (word == what).then(|| n.parse().ok()).flatten()
        })
    };
    Some(Summary {
        ok,
        passed: count("passed")?,
        failed: count("failed")?,
        ignored: count("ignored").unwrap_or(0),
    })
}

/// Whether a selected test passed, and if not why, from its exit code and
/// output. `None` exit code: it never finished.
pub fn verdict(exit_code: Option<i32>, output: &str) -> Result<Summary, String> {
    let Some(code) = exit_code else {
        return Err("did not finish".into());
    };
    let summary = parse_summary(output);
    match summary {
        None if code == 0 => Err("exit code 0 but no libtest summary".into()),
        None => Err(format!("exit code {code}, no libtest summary (crashed?)")),
        Some(s) if s.passed + s.failed == 0 => Err(format!(
            "ran 0 tests (no test has that exact name){}",
            if code != 0 {
                format!(", exit code {code}")
            } else {
                String::new()
            }
        )),
        Some(s) if code == 0 && s.ok && s.failed == 0 => Ok(s),
        Some(s) => Err(format!(
            "exit code {code}, {} passed, {} failed",
            s.passed, s.failed
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "running 1 test\ntest healthy ... ok\n\n\
        test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 7 filtered out; finished in 21.40s\n\n";
    const FAILED: &str = "test pod_not_answering ... FAILED\n\nfailures:\n...\n\
        test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 7 filtered out; finished in 9.01s\n\n";
    const NONE: &str = "running 0 tests\n\n\
        test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 8 filtered out; finished in 0.00s\n\n";

    #[test]
    fn parses_libtests_result_line() {
        assert_eq!(
            parse_summary(OK),
            Some(Summary {
                ok: true,
                passed: 1,
                failed: 0,
                ignored: 0
            })
        );
        let f = parse_summary(FAILED).unwrap();
        assert_eq!((f.ok, f.passed, f.failed), (false, 0, 1));
        let n = parse_summary(NONE).unwrap();
        assert_eq!((n.ok, n.passed), (true, 0));
        assert_eq!(parse_summary("thread 'main' panicked\n"), None);
        assert_eq!(
            parse_summary("test result: weird. 1 passed; 0 failed\n"),
            None
        );
    }

    #[test]
    fn takes_the_last_result_line() {
        let out = format!("test output mentions\ntest result: ok. 5 passed; 0 failed\n{FAILED}");
        assert!(!parse_summary(&out).unwrap().ok);
    }

    #[test]
    fn zero_tests_run_is_a_failure() {
        assert!(verdict(Some(0), OK).is_ok());
        let err = verdict(Some(0), NONE).unwrap_err();
        assert!(err.contains("ran 0 tests"), "{err}");
        assert!(verdict(Some(101), FAILED).unwrap_err().contains("1 failed"));
        assert!(verdict(Some(0), "").is_err());
        assert!(verdict(Some(134), "").unwrap_err().contains("134"));
        assert_eq!(verdict(None, OK).unwrap_err(), "did not finish");
        // A passing summary with a non-zero exit (e.g. a crash at exit).
        assert!(verdict(Some(1), OK).is_err());
    }
}
