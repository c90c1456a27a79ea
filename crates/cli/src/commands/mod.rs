pub mod audit;
pub mod backup;
pub mod client;
pub mod config;
pub mod events;
pub mod export;
pub mod history;
pub mod key;
pub mod pat;
pub mod proof;
pub mod revoke;
pub mod serve;
pub mod sinks;
pub mod user;
pub mod verify;

/// A progress bar with rate and ETA on a terminal; hidden when stderr is not one.
pub(crate) fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    }
}
