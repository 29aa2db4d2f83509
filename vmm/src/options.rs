//! The one option grammar of every flag that takes settings: `[KIND,]KEY=VALUE[,KEY=VALUE...]`,
//! as in `--iommu caching-mode=on,aw-bits=39`, `--serial file=/tmp/log`, `--device edu` or
//! `--disk path=disk.img,readonly=on`. Errors name the flag and the option, in clap's
//! words: `invalid value 'x' for '--iommu caching-mode': expected on or off`.

/// Why a flag's option string is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("invalid value '{value}' for '--{flag} {key}': {expected}")]
    InvalidValue {
        flag: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("unexpected option '{key}' for '--{flag}' (known: {known})")]
    Unknown {
        flag: &'static str,
        key: String,
        known: String,
    },
    #[error("option '{key}' given twice for '--{flag}'")]
    Duplicate { flag: &'static str, key: String },
    #[error("'{item}' in '--{flag}' is not KEY=VALUE")]
    NotKeyValue { flag: &'static str, item: String },
    #[error("invalid value '{value}' for '--{flag}': {expected}")]
    InvalidKind {
        flag: &'static str,
        value: String,
        expected: String,
    },
}

/// One flag's options, split and checked against the keys the flag knows.
#[derive(Debug)]
pub struct Options<'a> {
    flag: &'static str,
    /// A leading bare word (`edu` in `--device edu,...`), where the flag allows one.
    kind: Option<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Options<'a> {
    /// Splits `s` for `--flag`. `known` lists the keys the flag takes; `kind` says whether a
    /// leading bare word is allowed.
    pub fn parse(
        flag: &'static str,
        s: &'a str,
        known: &[&str],
        kind: bool,
    ) -> Result<Self, OptionError> {
        let mut opts = Options {
            flag,
            kind: None,
            pairs: Vec::new(),
        };
        for (i, item) in s.split(',').enumerate() {
            if item.is_empty() {
                continue;
            }
            let Some((k, v)) = item.split_once('=') else {
                if i == 0 && kind {
                    opts.kind = Some(item);
                    continue;
                }
                return Err(OptionError::NotKeyValue {
                    flag,
                    item: item.into(),
                });
            };
            if !known.contains(&k) {
                return Err(OptionError::Unknown {
                    flag,
                    key: k.into(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                });
            }
            if opts.pairs.iter().any(|(old, _)| *old == k) {
                return Err(OptionError::Duplicate {
                    flag,
                    key: k.into(),
                });
            }
            opts.pairs.push((k, v));
        }
        Ok(opts)
    }

    /// The leading bare word, if any.
    pub fn kind(&self) -> Option<&'a str> {
        self.kind
    }

    /// The raw value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// Builds the error for a bad value of `key`.
    pub fn invalid(&self, key: &'static str, value: &str, expected: &str) -> OptionError {
        OptionError::InvalidValue {
            flag: self.flag,
            key,
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// Builds the error for a bad leading word.
    pub fn invalid_kind(&self, value: &str, expected: &str) -> OptionError {
        OptionError::InvalidKind {
            flag: self.flag,
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// `key=on|off` (also true/false, 1/0), `default` when absent.
    pub fn on_off(&self, key: &'static str, default: bool) -> Result<bool, OptionError> {
        match self.get(key) {
            None => Ok(default),
            Some("on" | "true" | "1") => Ok(true),
            Some("off" | "false" | "0") => Ok(false),
            Some(v) => Err(self.invalid(key, v, "expected on or off")),
        }
    }

    /// `key=N` (decimal or 0x hex) within `range`, `default` when absent.
    pub fn number(
        &self,
        key: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, OptionError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let expected = || {
            format!(
                "expected a number from {:#x} to {:#x}",
                range.start(),
                range.end()
            )
        };
        match parse_int(v) {
            Some(n) if range.contains(&n) => Ok(n),
            _ => Err(self.invalid(key, v, &expected())),
        }
    }

    /// `key=VALUE` where VALUE is one of `choices`, `default` when absent.
    pub fn choice<T: Copy>(
        &self,
        key: &'static str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T, OptionError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match choices.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => Ok(*t),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                Err(self.invalid(key, v, &format!("expected {}", names.join(" or "))))
            }
        }
    }
}

/// Decimal, or hexadecimal with a 0x prefix.
pub fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses `512M`, `2G`, `65536K`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    parse_int(num)?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["a", "b"];

    #[test]
    fn options_empty_string_gives_defaults() {
        let o = Options::parse("x", "", KEYS, false).unwrap();
        assert_eq!((o.kind(), o.get("a")), (None, None));
        assert_eq!(o.on_off("a", true), Ok(true));
        assert_eq!(o.number("b", 7, 0..=9), Ok(7));
    }

    #[test]
    fn options_kind_only_first_and_only_where_allowed() {
        let o = Options::parse("device", "edu,a=1", KEYS, true).unwrap();
        assert_eq!((o.kind(), o.get("a")), (Some("edu"), Some("1")));
        assert_eq!(
            Options::parse("device", "a=1,edu", KEYS, true).unwrap_err(),
            OptionError::NotKeyValue {
                flag: "device",
                item: "edu".into()
            }
        );
        assert!(Options::parse("iommu", "edu", KEYS, false).is_err());
    }

    #[test]
    fn options_unknown_key_names_flag_and_known_keys() {
        let e = Options::parse("iommu", "c=1", KEYS, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected option 'c' for '--iommu' (known: a, b)"
        );
    }

    #[test]
    fn options_duplicate_key_is_refused() {
        let e = Options::parse("iommu", "a=on,a=off", KEYS, false).unwrap_err();
        assert_eq!(e.to_string(), "option 'a' given twice for '--iommu'");
    }

    #[test]
    fn options_on_off_error_names_flag_and_option() {
        let o = Options::parse("iommu", "a=x", KEYS, false).unwrap();
        assert_eq!(
            o.on_off("a", false).unwrap_err().to_string(),
            "invalid value 'x' for '--iommu a': expected on or off"
        );
        let o = Options::parse("iommu", "a=off,b=1", KEYS, false).unwrap();
        assert_eq!(
            (o.on_off("a", true), o.on_off("b", false)),
            (Ok(false), Ok(true))
        );
    }

    #[test]
    fn options_number_out_of_range_is_refused() {
        let o = Options::parse("x", "a=0x10,b=10", KEYS, false).unwrap();
        assert_eq!(o.number("a", 0, 0..=0xff), Ok(0x10));
        assert!(o.number("b", 0, 0..=9).is_err());
        let o = Options::parse("x", "a=ten", KEYS, false).unwrap();
        assert!(o.number("a", 0, 0..=99).is_err());
    }

    #[test]
    fn options_choice_lists_the_choices() {
        let o = Options::parse("iommu", "a=40", KEYS, false).unwrap();
        assert_eq!(
            o.choice("a", 0u8, &[("39", 39), ("48", 48)])
                .unwrap_err()
                .to_string(),
            "invalid value '40' for '--iommu a': expected 39 or 48"
        );
    }

    #[test]
    fn size_suffixes_and_overflow() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("0x1000"), Some(0x1000));
        assert_eq!(parse_size("99999999999999999G"), None);
        assert_eq!(parse_size("12X"), None);
    }
}
