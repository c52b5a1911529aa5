//! The one error type of the data path. Each variant says what the caller can do;
//! front ends turn it into a negative errno with [`Error::errno`].

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error from a leaf, as a positive errno.
    Io(i32),
    /// Stored data failed verification (checksum or authentication tag).
    Corrupt { offset: u64 },
    /// The request reaches past the end of the device or is misaligned.
    OutOfRange,
    /// The layer below has no room left.
    NoSpace,
    /// The operation is not supported by this stack.
    Unsupported,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The negative errno a front end reports for this error.
    pub fn errno(self) -> i32 {
        -match self {
            Error::Io(e) if e > 0 => e,
            Error::Io(_) => libc::EIO,
            Error::Corrupt { .. } => libc::EIO,
            Error::OutOfRange => libc::EINVAL,
            Error::NoSpace => libc::ENOSPC,
            Error::Unsupported => libc::EOPNOTSUPP,
        }
    }

    /// An error from a raw syscall or CQE result (negative errno).
    pub fn from_res(res: i32) -> Error {
        match -res {
            libc::ENOSPC => Error::NoSpace,
            libc::EOPNOTSUPP => Error::Unsupported,
            e => Error::Io(e),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::from_res(-e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{}", std::io::Error::from_raw_os_error(*e)),
            Error::Corrupt { offset } => write!(f, "corrupt data at byte {offset}"),
            Error::OutOfRange => f.write_str("request out of range"),
            Error::NoSpace => f.write_str("no space left on the layer below"),
            Error::Unsupported => f.write_str("operation not supported"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_stays_small() {
        assert!(std::mem::size_of::<Result<u32>>() <= 16);
    }

    #[test]
    fn errno_is_negative() {
        assert_eq!(Error::Io(libc::EIO).errno(), -libc::EIO);
        assert_eq!(Error::NoSpace.errno(), -libc::ENOSPC);
        assert_eq!(Error::from_res(-libc::ENOSPC), Error::NoSpace);
    }
}
