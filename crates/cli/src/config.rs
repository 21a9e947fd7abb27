//! `--config FILE`: every flag of a command, from a TOML file.
//!
//! Keys are the long flag names (`bind`, `connect`, `log-level`, `sync`...;
//! `_` may stand for `-`), at the top level or in a table named after the
//! command (`[node]`, `[demo]`). A string or number is the flag's value, an
//! array repeats the flag, `true` sets a switch (`false` leaves it off), and
//! an integer on a counted flag (`verbose = 2`) repeats it. The file's flags
//! go before the command line's, so the command line wins.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The command line with the config file's flags spliced in after the
/// subcommand, if `--config` is given; otherwise `args` unchanged.
pub fn expand(args: Vec<String>, command: &clap::Command) -> Result<Vec<String>> {
    let Some(path) = config_path(&args) else { return Ok(args) };
    // The subcommand is the first argument naming one.
    let Some((at, sub)) =
        args.iter().enumerate().skip(1).find_map(|(i, a)| command.find_subcommand(a).map(|s| (i, s.clone())))
    else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the config file {path}"))?;
    let flags = flags_from(&text, &sub, command, Path::new(&path))?;
    let mut out = args[..=at].to_vec();
    out.extend(flags);
    out.extend(args[at + 1..].iter().cloned());
    Ok(out)
}

fn config_path(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.to_string());
        }
    }
    None
}

/// The flags a config file's text stands for.
fn flags_from(text: &str, sub: &clap::Command, root: &clap::Command, path: &Path) -> Result<Vec<String>> {
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut settings: Vec<(String, toml::Value)> = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(t) if root.find_subcommand(&k).is_some() => {
                if k == sub.get_name() {
                    settings.extend(t);
                }
            }
            v => settings.push((k, v)),
        }
    }
    let mut flags = Vec::new();
    for (key, value) in settings {
        let name = key.replace('_', "-");
        if name == "config" {
            bail!("{}: a config file cannot name another (\"config\")", path.display());
        }
        let arg = sub
            .get_arguments()
            .chain(root.get_arguments())
            .find(|a| a.get_long() == Some(name.as_str()))
            .with_context(|| format!("{}: unknown setting {key:?} for `rs2p {}`", path.display(), sub.get_name()))?;
        let counted = matches!(arg.get_action(), clap::ArgAction::Count);
        let switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let flag = format!("--{name}");
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => bail!("{}: {key:?} cannot be {}", path.display(), other.type_str()),
            })
        };
        match value {
            toml::Value::Boolean(on) if switch || counted => {
                if on {
                    flags.push(flag);
                }
            }
            toml::Value::Integer(n) if counted => flags.extend((0..n.max(0)).map(|_| flag.clone())),
            toml::Value::Array(items) => {
                for item in &items {
                    flags.push(flag.clone());
                    flags.push(scalar(item)?);
                }
            }
            v if !switch && !counted => {
                flags.push(flag);
                flags.push(scalar(&v)?);
            }
            v => bail!("{}: {key:?} is a switch: write true or false, not {}", path.display(), v.type_str()),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn expand_with(toml: &str, args: &[&str]) -> Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("rs2p-config-test-{}-{}", std::process::id(), toml.len()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("node.toml");
        std::fs::write(&file, toml)?;
        let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        argv.push("--config".into());
        argv.push(file.display().to_string());
        let r = expand(argv, &crate::Cli::command());
        std::fs::remove_dir_all(&dir)?;
        r
    }

    #[test]
    fn a_file_becomes_flags_before_the_command_line() {
        let toml = "bind = \"127.0.0.1:4000\"\nconnect = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nsync = true\ntls = false\nverbose = 2\n[node]\nlog_level = \"debug\"\n[demo]\nnodes = 5\n";
        let out = expand_with(toml, &["rs2p", "node", "--json"]).unwrap();
        let flags: Vec<&str> = out.iter().map(String::as_str).take(out.len() - 2).collect();
        assert_eq!(
            flags,
            [
                "rs2p",
                "node",
                "--bind",
                "127.0.0.1:4000",
                "--connect",
                "127.0.0.1:1",
                "--connect",
                "127.0.0.1:2",
                "--log-level",
                "debug",
                "--sync",
                "--verbose",
                "--verbose",
                "--json"
            ]
        );
    }

    #[test]
    fn unknown_or_ill_typed_settings_are_refused_by_name() {
        let e = expand_with("colour = \"blue\"\n", &["rs2p", "node"]).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"colour\" for `rs2p node`"), "{e}");
        let e = expand_with("json = \"yes\"\n", &["rs2p", "node"]).unwrap_err().to_string();
        assert!(e.contains("\"json\" is a switch"), "{e}");
        let e = expand_with("bind = [\n", &["rs2p", "node"]).unwrap_err().to_string();
        assert!(e.contains("is not valid TOML"), "{e}");
    }
}
