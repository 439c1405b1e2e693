use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worker::run(worker::Args::parse()).await
}
