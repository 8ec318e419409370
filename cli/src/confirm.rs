//! Questions before irreversible steps, asked the way apt or terraform ask them: only when a
//! person can answer (stdin is a terminal), never in a pipe, a cron job or Ansible, and never
//! with `--yes`.

use std::io::{BufRead, IsTerminal, Write};

/// What came of a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The operator answered yes at the terminal.
    Yes,
    /// The operator answered anything else: stop, nothing changed.
    No,
    /// Not asked (`--yes`, or no terminal on stdin): go on, and say what was done.
    NotAsked,
}

/// Asks `question` on stderr and reads the answer from stdin.
pub fn confirm(question: &str, yes: bool) -> std::io::Result<Answer> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(Answer::NotAsked);
    }
    anstream::eprint!("{question}\nContinue? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Answer::Yes,
        _ => Answer::No,
    })
}

/// The error a "no" ends the command with (exit 1: nothing was changed).
pub fn cancelled() -> anyhow::Error {
    anyhow::anyhow!(
        "cancelled at your answer: nothing was changed\n  next step: run the command again and answer y, or pass --yes"
    )
}
