use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    director::run(director::Args::parse()).await
}
