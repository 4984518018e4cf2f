//! A writer for the cpio "newc" format, the one the kernel unpacks an
//! initramfs from. Written here rather than by `cpio`/`gen_init_cpio`
//! because it is a few lines, needs no root for device nodes, and keeps the
//! image the same on every machine (fixed inode numbers, uid/gid 0, mtime 0).
//!
//! Each entry is a 110-byte ASCII header ("070701" and 13 eight-digit hex
//! fields), the NUL-terminated name padded to a multiple of 4, then the data
//! padded to a multiple of 4. The archive ends with an entry named
//! "TRAILER!!!". The kernel accepts it uncompressed.

use std::io::{self, Write};

pub const MAGIC: &str = "070701";
pub const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;

pub struct Writer<W: Write> {
    out: W,
    /// Bytes written so far, for the padding.
    pos: usize,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            pos: 0,
            next_ino: 1,
        }
    }

    /// A directory, e.g. "proc" (names are relative: no leading '/').
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    /// A regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// A character device node, e.g. dev/console (5, 1): the kernel opens
    /// it for init's stdin/stdout before anything mounts devtmpfs.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 1, (0, 0), 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio file over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, rdev, size)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u32,
    ) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len();
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.pos % 4) % 4;
        self.write(&[0; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: name, mode, rdev, data.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// A strict reader: checks the magic, the padding and the trailer.
    fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let total = buf.len();
        let mut entries = Vec::new();
        loop {
            let at = total - buf.len();
            assert_eq!(at % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&buf[..6], MAGIC.as_bytes());
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + 8 * i..6 + 8 * (i + 1)]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name_end = HEADER_LEN + namesize;
            assert_eq!(buf[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&buf[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_string();
            let data_at = name_end.next_multiple_of(4);
            assert!(buf[name_end..data_at].iter().all(|&b| b == 0));
            let data = buf[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            buf = &buf[next..];
            if name == TRAILER {
                assert!(buf.is_empty(), "bytes after the trailer");
                return entries;
            }
            entries.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn round_trips_dirs_files_and_devices() {
        let mut w = Writer::new(Vec::new());
        w.dir("dev").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("mods/01_a.ko", 0o644, &[1, 2, 3, 4, 5]).unwrap();
        w.file("empty", 0o644, b"").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "mods/01_a.ko", "empty"]
        );
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!((entries[1].1, entries[1].2), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(entries[2].1, S_IFREG | 0o755);
        assert_eq!(entries[2].3, b"#!/bin/sh\n");
        assert_eq!(entries[3].3, [1, 2, 3, 4, 5]);
        assert!(entries[4].3.is_empty());
    }

    #[test]
    fn header_is_ascii_hex_with_the_name_size_counting_the_nul() {
        let bytes = Writer::new(Vec::new()).finish().unwrap();
        // Only the trailer: 110-byte header + "TRAILER!!!\0" (11) padded to 124.
        assert_eq!(bytes.len(), 124);
        let text = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert!(text.starts_with("070701"));
        assert!(text[6..].chars().all(|c| c.is_ascii_hexdigit()));
        // namesize is the 12th field.
        assert_eq!(&text[6 + 8 * 11..6 + 8 * 12], "0000000b");
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 11], b"TRAILER!!!\0");
    }

    #[test]
    fn rejects_empty_names() {
        assert!(Writer::new(Vec::new()).file("/", 0o644, b"").is_err());
    }
}
