//! Questions before irreversible steps, asked the way apt or terraform ask them: only when a
//! person can answer (stdin is a terminal), never in a pipe, a cron job or Ansible, and never
//! with `--yes`.

use std::io::{BufRead, IsTerminal, Write};

/// Asks `question` on stderr and reads the answer from stdin. `Ok(true)`: go on (answered
/// yes, `--yes`, or no terminal to ask on); `Ok(false)`: the operator said no.
pub fn confirm(question: &str, yes: bool) -> std::io::Result<bool> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    anstream::eprint!("{question}\nContinue? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The error a "no" ends the command with (exit 1: nothing was changed).
pub fn cancelled() -> anyhow::Error {
    anyhow::anyhow!(
        "cancelled at your answer: nothing was changed\n  next step: run the command again and answer y, or pass --yes"
    )
}
