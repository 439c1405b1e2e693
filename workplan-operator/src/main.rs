use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    workplan_operator::run(workplan_operator::Args::parse()).await
}
