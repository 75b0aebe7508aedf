//! `kubectl seapath`: installed on the PATH as `kubectl-seapath`, kubectl runs it as a plugin.
//! The logic lives in `seapath_operator::plugin`.

use std::process::ExitCode;

use clap::Parser;
use seapath_operator::plugin::{PluginCli, run};

fn main() -> ExitCode {
    let cli = PluginCli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let mut progress = std::io::stderr();
    match runtime.block_on(run(cli, &mut out, &mut progress)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
