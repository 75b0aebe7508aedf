use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs SEAPATH virtual machines (Ceph RBD disks, libvirt domains) from Kubernetes resources.
#[derive(Parser)]
#[command(name = "seapath-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write/check them in a directory.
    Crdgen {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// With --out-dir: fail if the files there differ from what the types generate.
        #[arg(long, requires = "out_dir")]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen {
            out_dir: Some(dir),
            check: true,
        } => seapath_operator::crdgen::check(&dir),
        Command::Crdgen {
            out_dir: Some(dir),
            check: false,
        } => seapath_operator::crdgen::write_all(&dir),
        Command::Crdgen { out_dir: None, .. } => {
            seapath_operator::crdgen::render_all().map(|yaml| print!("{yaml}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
