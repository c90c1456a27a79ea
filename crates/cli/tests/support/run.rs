//! The `grantline` binary against a test database.

use grantline_store::testing::TestDb;
use std::path::Path;
use std::process::Output;

/// Runs `grantline ARGS --database <db>`, with `--data-dir DIR` (and `DIR/grantline.toml` as
/// `--config` when it exists), taking no database URL or checkpoint key from the environment.
pub fn grantline(db: &TestDb, dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_grantline"));
    cmd.args(args).arg("--database").arg(db.url());
    if let Some(dir) = dir {
        cmd.arg("--data-dir").arg(dir);
        let config = dir.join("grantline.toml");
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
    }
    cmd.env_remove("GRANTLINE_DATABASE_URL")
        .env_remove("GRANTLINE_CHECKPOINT_KEY")
        .output()
        .expect("run grantline")
}
