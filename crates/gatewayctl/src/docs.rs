//! Shell completions and man pages, generated from the CLI's own definition so that they can
//! never disagree with it.

use crate::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "gatewayctl", out);
    Ok(())
}

/// Writes `gatewayctl.1` and a page per subcommand (`gatewayctl-instance-create.1`, ...) into
/// `dir`.
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    write_pages(dir, &cmd, "gatewayctl")
}

fn write_pages(dir: &Path, cmd: &clap::Command, name: &str) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name)
        .render(&mut page)
        .with_context(|| format!("cannot render {}", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_cover_the_subcommands_in_every_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for word in ["instance", "modify-spec", "recharge", "--endpoint"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }

    #[test]
    fn man_pages_are_written_for_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        for page in [
            "gatewayctl.1",
            "gatewayctl-instance.1",
            "gatewayctl-instance-modify-spec.1",
            "gatewayctl-account-recharge.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.contains(".TH"), "{page} is not a man page");
        }
    }
}

#[cfg(test)]
mod help {
    use super::*;

    /// Every command and every flag says what it is for in `--help` (clap's own `help` and
    /// `version` aside).
    #[test]
    fn every_command_and_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_global_set() && !path.is_empty() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{here} (command)"));
                }
                walk(sub, &here, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "gatewayctl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
