//! Leader election against the real API server: one holder at a time, hand-over on release.

use std::time::Duration;

use e2e::TestEnv;
use plumbing::Shutdown;
use plumbing::leader::acquire;

#[tokio::test]
async fn only_one_candidate_leads_and_release_hands_over() {
    let ns = TestEnv::get().namespace("leader-election").await;
    let shutdown = Shutdown::new();
    let first = acquire(ns.client.clone(), &ns.name, "kubeci-test", "candidate-a", &shutdown)
        .await
        .unwrap()
        .expect("the first candidate leads");

    let (client, name, stop) = (ns.client.clone(), ns.name.clone(), shutdown.clone());
    let mut second =
        tokio::spawn(async move { acquire(client, &name, "kubeci-test", "candidate-b", &stop).await });
    // Well past a renewal period: the second must still be waiting while the first holds it.
    assert!(
        tokio::time::timeout(Duration::from_secs(7), &mut second).await.is_err(),
        "a second candidate became leader while the first held the lease"
    );

    first.release().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second candidate takes over after the release")
        .unwrap()
        .unwrap()
        .expect("leads");
    second.release().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_waiting() {
    let ns = TestEnv::get().namespace("leader-shutdown").await;
    let holder = Shutdown::new();
    let _first =
        acquire(ns.client.clone(), &ns.name, "kubeci-test", "holder", &holder).await.unwrap().unwrap();
    let shutdown = Shutdown::new();
    let (client, name, stop) = (ns.client.clone(), ns.name.clone(), shutdown.clone());
    let waiting = tokio::spawn(async move { acquire(client, &name, "kubeci-test", "waiter", &stop).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.trigger();
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("returns on shutdown");
    assert!(outcome.unwrap().unwrap().is_none(), "no leadership after shutdown");
}
