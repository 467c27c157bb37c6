//! How the settings structs ([`NodeSettings`](crate::NodeSettings) and the
//! block structs it holds) become command-line flags and `LLMTRACE_*`
//! environment variables, and how what they give is laid over the file.
//!
//! Every settings struct derives both `serde::Deserialize` (the TOML file)
//! and `clap::Args` (flags and environment), with `Option` fields: `None` is
//! "not given by this source". Precedence flag > environment > file > default
//! is then computed in three steps, each written once:
//!
//! 1. clap prefers a flag to its environment variable;
//! 2. [`Flags::over`] lays what clap found over the file's settings (clap's
//!    generated `update_from_arg_matches` replaces exactly the fields given);
//! 3. the resolvers (`NodeConfig::resolve` and the block resolvers) apply the
//!    default, a named constant that `--help` shows through `shown!`.
//!
//! The config enums derive `clap::ValueEnum` and `serde::Deserialize` with the
//! same kebab-case names; `value_names!` gives them `as_str` and `Display`
//! from that one spelling.

use std::marker::PhantomData;
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches, ValueEnum};

/// The text of a setting's default for `--help`
/// (`#[arg(default_value = shown!(DEFAULT_X))]`): the constant the resolver
/// applies, so the two cannot differ. Clap would also apply it; [`Flags`]
/// drops the values clap took from a default, so that the file still beats
/// the default.
macro_rules! shown {
    ($default:expr) => {{
        static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TEXT.get_or_init(|| $default.to_string()).as_str()
    }};
}
pub(crate) use shown;

/// `as_str` and `Display` for config enums deriving `clap::ValueEnum`: the
/// name clap gives each variant (kebab-case; serde reads the same with
/// `rename_all = "kebab-case"`).
macro_rules! value_names {
    ($($ty:ty),+ $(,)?) => {$(
        impl $ty {
            /// The name of this value in flags, environment and file.
            pub fn as_str(self) -> &'static str {
                static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
                $crate::flags::value_name(&self, &NAMES)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}
pub(crate) use value_names;

/// The name clap gives `value`, from `names` (one table per enum, filled on
/// first use and kept for the life of the process, so it lends `'static`).
pub(crate) fn value_name<T: ValueEnum + PartialEq>(
    value: &T,
    names: &'static OnceLock<Vec<String>>,
) -> &'static str {
    let names = names.get_or_init(|| {
        T::value_variants()
            .iter()
            .map(|v| {
                v.to_possible_value()
                    .expect("config enums skip no variant")
                    .get_name()
                    .to_owned()
            })
            .collect()
    });
    let index = T::value_variants()
        .iter()
        .position(|v| v == value)
        .expect("a value is one of its type's variants");
    &names[index]
}

/// The settings `T` as flags and environment variables give them. Flatten
/// it into a `clap::Parser` (`#[command(flatten)]`), then lay it over the
/// file's settings with [`Flags::over`].
#[derive(Debug, Clone)]
pub struct Flags<T> {
    /// clap's matches, without the values it took from a `default_value`
    /// (those are only shown in `--help`).
    matches: ArgMatches,
    settings: PhantomData<T>,
}

impl<T: FromArgMatches> Flags<T> {
    /// `lower` (the file's settings) with every setting given by a flag or
    /// an environment variable replaced by that value.
    pub fn over(&self, mut lower: T) -> T {
        lower
            .update_from_arg_matches(&self.matches)
            .expect("the matches were read into T when parsed");
        lower
    }
}

impl<T: Args> Args for Flags<T> {
    fn augment_args(cmd: Command) -> Command {
        T::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        T::augment_args_for_update(cmd)
    }
}

impl<T: FromArgMatches> FromArgMatches for Flags<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut matches = matches.clone();
        let defaulted: Vec<String> = matches
            .ids()
            .map(|id| id.as_str().to_owned())
            .filter(|id| matches.value_source(id) == Some(ValueSource::DefaultValue))
            .collect();
        for id in defaulted {
            matches
                .try_clear_id(&id)
                .expect("an id of these very matches");
        }
        // Reading T now is what makes `over` infallible.
        T::from_arg_matches(&matches)?;
        Ok(Flags {
            matches,
            settings: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// `file` with `args` (flags, without the program name) laid over it, as the
/// node does with its command line.
#[cfg(test)]
pub(crate) fn given<T: Args + FromArgMatches>(file: T, args: &[&str]) -> T {
    let matches = Flags::<T>::augment_args(Command::new("test"))
        .try_get_matches_from(std::iter::once("test").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Flags::<T>::from_arg_matches(&matches)
        .expect("parsed")
        .over(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ClusterSettings, LogFormat, NodeSettings, OwnerUnreachable, ShardPlacement, SnapshotMode,
    };
    use serde::de::{value::StrDeserializer, DeserializeOwned, IntoDeserializer};

    /// Every variant's `as_str` is the name clap parses and serde reads.
    fn names_agree<T: ValueEnum + DeserializeOwned + PartialEq + std::fmt::Debug + Copy>(
        as_str: fn(T) -> &'static str,
    ) {
        for v in T::value_variants() {
            let name = as_str(*v);
            assert_eq!(T::from_str(name, false).as_ref(), Ok(v), "clap: {name}");
            let de: StrDeserializer<'_, serde::de::value::Error> = name.into_deserializer();
            assert_eq!(T::deserialize(de).as_ref(), Ok(v), "serde: {name}");
        }
    }

    #[test]
    fn enum_names_are_one_spelling_for_clap_serde_and_as_str() {
        names_agree(LogFormat::as_str);
        names_agree(ShardPlacement::as_str);
        names_agree(SnapshotMode::as_str);
        names_agree(OwnerUnreachable::as_str);
        assert_eq!(SnapshotMode::WriteThrough.as_str(), "write-through");
        assert_eq!(OwnerUnreachable::Deny.to_string(), "deny");
    }

    #[test]
    fn a_bad_enum_value_is_refused_naming_its_flag_or_key() {
        for (flag, key, table) in [
            ("--log-format", "log_format", ""),
            ("--shard-placement", "shard_placement", ""),
            ("--snapshot-mode", "snapshot_mode", ""),
            (
                "--on-owner-unreachable",
                "on_owner_unreachable",
                "[cluster]\n",
            ),
        ] {
            let err = NodeSettings::augment_args(Command::new("t"))
                .try_get_matches_from(["t", flag, "write-around"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{err}");
            let err = NodeSettings::parse(&format!("{table}{key} = \"write-around\"")).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn a_shown_default_does_not_beat_the_file() {
        let file: ClusterSettings = toml::from_str("forward_batch_max = 7").unwrap();
        let s = given(file.clone(), &[]);
        assert_eq!(s.forward_batch_max, Some(7));
        let s = given(file, &["--forward-batch-max", "9"]);
        assert_eq!(s.forward_batch_max, Some(9));
        // Not given anywhere: None, left to the resolver's default.
        assert_eq!(s.forward_timeout_ms, None);
    }
}
