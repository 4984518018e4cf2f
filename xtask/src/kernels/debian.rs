//! Which Debian kernel package stands for a series ("6.1"): the newest
//! generic amd64 image of it. Pure, so it is tested without the registry.
//!
//! Build numbers are never pinned because Debian's mirrors drop old ones;
//! the newest is found by comparing the ABI part of the package names with
//! dpkg's own version order (numbers compare as numbers, so 6.12.100 is newer
//! than 6.12.99).

use std::cmp::Ordering;

/// The series the matrix boots unless told otherwise: bullseye's 5.10,
/// bookworm's 6.1 and bookworm-backports' 6.12.
pub const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12"];

const PREFIX: &str = "linux-image-";
const ARCH: &str = "-amd64";

/// The ABI of `name` ("5.10.0-46" of linux-image-5.10.0-46-amd64) if it is a
/// generic amd64 kernel image of `series`: not a meta package
/// (linux-image-6.1-amd64), not rt, cloud, -dbg or -unsigned.
pub fn series_abi<'a>(series: &str, name: &'a str) -> Option<&'a str> {
    if !is_series(series) || ["-rt-", "-cloud-"].iter().any(|f| name.contains(f)) {
        return None;
    }
    // -dbg, -unsigned and -signed-template do not end in the arch.
    let abi = name.strip_prefix(PREFIX)?.strip_suffix(ARCH)?;
    let rest = abi.strip_prefix(series)?.strip_prefix('.')?;
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // Any other flavour would sit between the ABI and the arch
    // (5.10.0-46-foo-amd64); an ABI's own parts start with a digit.
    let last = abi.rsplit('-').next().unwrap_or(abi);
    last.starts_with(|c: char| c.is_ascii_digit())
        .then_some(abi)
}

/// "major.minor", e.g. "6.1".
pub fn is_series(s: &str) -> bool {
    let num = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    s.split_once('.').is_some_and(|(a, b)| num(a) && num(b))
}

/// The newest package of `series` among `names`.
pub fn newest<'a, I>(series: &str, names: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    names
        .into_iter()
        .filter_map(|n| Some((n, series_abi(series, n)?)))
        .max_by(|a, b| compare_versions(a.1, b.1))
        .map(|(n, _)| n)
}

/// The kernel release (`uname -r`) a package installs: its name without
/// the "linux-image-" prefix.
pub fn release(package: &str) -> &str {
    package.strip_prefix(PREFIX).unwrap_or(package)
}

/// dpkg's version order (verrevcmp): alternating non-digit and digit runs;
/// non-digits compare letters before other characters and '~' before
/// everything, even the end; digit runs compare as numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(b'~') => -1,
            Some(c) => i32::from(c) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice of what `apt-cache pkgnames linux-image-` lists.
    const NAMES: &[&str] = &[
        "linux-image-5.10.0-9-amd64",
        "linux-image-5.10.0-46-amd64",
        "linux-image-5.10.0-45-amd64",
        "linux-image-5.10.0-47-amd64-unsigned",
        "linux-image-5.10.0-47-amd64-dbg",
        "linux-image-5.10.0-47-rt-amd64",
        "linux-image-5.10.0-47-cloud-amd64",
        "linux-image-6.1-amd64",
        "linux-image-6.1-amd64-signed-template",
        "linux-image-6.1.0-0.deb11.52-amd64",
        "linux-image-6.1.0-56-amd64",
        "linux-image-6.1.0-9-amd64",
        "linux-image-6.1.0-57-rt-amd64",
        "linux-image-6.12-amd64",
        "linux-image-6.12.99+deb12-amd64",
        "linux-image-6.12.100+deb12-amd64",
        "linux-image-6.12.90+deb12.1-amd64",
        "linux-image-6.12.101+deb12-cloud-amd64",
        "linux-image-6.12.101+deb12-amd64-dbg",
        "linux-image-amd64",
    ];

    fn pick(series: &str) -> Option<&'static str> {
        newest(series, NAMES.iter().copied())
    }

    #[test]
    fn picks_the_newest_generic_image_of_each_series() {
        assert_eq!(pick("5.10"), Some("linux-image-5.10.0-46-amd64"));
        assert_eq!(pick("6.1"), Some("linux-image-6.1.0-56-amd64"));
        assert_eq!(pick("6.12"), Some("linux-image-6.12.100+deb12-amd64"));
        assert_eq!(pick("6.6"), None);
        assert_eq!(pick("6"), None);
    }

    #[test]
    fn series_are_major_dot_minor() {
        assert!(is_series("5.10") && is_series("6.1"));
        for bad in ["6", "6.", ".1", "6.1.0", "6.x", ""] {
            assert!(!is_series(bad), "{bad}");
        }
    }

    #[test]
    fn series_do_not_match_by_prefix_alone() {
        // 6.1 is not 6.12, and meta packages name no build.
        assert_eq!(series_abi("6.1", "linux-image-6.12.100+deb12-amd64"), None);
        assert_eq!(series_abi("6.1", "linux-image-6.1-amd64"), None);
        assert_eq!(
            series_abi("6.1", "linux-image-6.1.0-56-amd64"),
            Some("6.1.0-56")
        );
    }

    #[test]
    fn excludes_rt_cloud_dbg_and_unsigned() {
        for name in [
            "linux-image-5.10.0-47-rt-amd64",
            "linux-image-5.10.0-47-cloud-amd64",
            "linux-image-5.10.0-47-amd64-dbg",
            "linux-image-5.10.0-47-amd64-unsigned",
            "linux-image-6.1-amd64-signed-template",
            "linux-image-5.10.0-47-foo-amd64",
        ] {
            assert_eq!(series_abi("5.10", name), None, "{name}");
        }
    }

    #[test]
    fn versions_compare_like_dpkg() {
        use Ordering::*;
        for (a, b, want) in [
            ("6.12.100+deb12", "6.12.99+deb12", Greater),
            ("5.10.0-46", "5.10.0-9", Greater),
            ("6.1.0-56", "6.1.0-0.deb11.52", Greater),
            ("6.12.90+deb12.1", "6.12.90+deb12", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0", Equal),
            ("1.01", "1.1", Equal),
            ("1.0a", "1.0+", Less),
            ("", "0", Equal),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn release_is_the_name_without_the_prefix() {
        assert_eq!(
            release("linux-image-6.12.117+deb12-amd64"),
            "6.12.117+deb12-amd64"
        );
    }
}
