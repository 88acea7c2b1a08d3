//! The RabbitMQ publisher against real brokers: what arrives in a bound
//! queue, in what order, and what `durable()` reports, including across
//! broker restarts, network cuts, a full window and refused credentials.
//!
//! Tests that only publish use the shared broker (`WALCAST_TEST_AMQP_URL`);
//! tests that break the broker start a node of their own
//! (`support/rabbit_node.rs`); network cuts go through a proxy
//! (`support/tcp_proxy.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use walcast::capture::Sink;
use walcast::event::Lsn;
use walcast::publisher::{encode, PublishError, Publisher};

use crate::support;
use crate::support::publisher_fixtures::*;
use crate::support::rabbit_node::RabbitNode;
use crate::support::tcp_proxy::TcpProxy;

const TABLE: &str = "orders";

async fn connect(config: &walcast::config::RabbitConfig) -> Publisher {
    timeout(
        Duration::from_secs(30),
        Publisher::connect(config, CancellationToken::new()),
    )
    .await
    .expect("connect timed out")
    .expect("connect")
}

/// Polls `durable()` once without waiting (also exercises its
/// cancel-safety: the future is dropped whenever nothing moved).
async fn durable_now(publisher: &mut Publisher) -> Option<Lsn> {
    match timeout(Duration::ZERO, publisher.durable()).await {
        Ok(result) => Some(result.expect("durable")),
        Err(_) => None,
    }
}

/// What a producer saw: the positions `durable()` returned, each with the
/// confirmed counter at that moment.
#[derive(Default)]
struct Observed {
    positions: Vec<(Lsn, u64)>,
    drained: Option<Lsn>,
}

/// Sends `txs` transactions of `per_tx` events through the Sink API,
/// polling `durable()` after every transaction, then drains.
async fn produce(
    mut publisher: Publisher,
    txs: u64,
    per_tx: u32,
    sent: Arc<AtomicU64>,
) -> (Publisher, Observed) {
    let stats = publisher.stats();
    let mut observed = Observed::default();
    let note = |observed: &mut Observed, position: Lsn| {
        observed
            .positions
            .push((position, stats.snapshot().confirmed));
    };
    for tx in 0..txs {
        for ordinal in 0..per_tx {
            publisher
                .send(event(TABLE, tx, ordinal))
                .await
                .expect("send");
            sent.fetch_add(1, Ordering::SeqCst);
        }
        publisher.end_transaction(end_lsn(tx)).await.unwrap();
        while let Some(position) = durable_now(&mut publisher).await {
            note(&mut observed, position);
        }
    }
    observed.drained = publisher.drain().await.expect("drain");
    (publisher, observed)
}

/// Every position `durable()` returned is the end of a transaction we
/// ended, they only grow, and each came after every message of that
/// transaction (and before) was confirmed.
fn check_positions(observed: &Observed, txs: u64, per_tx: u32) {
    let mut previous = None;
    for &(position, confirmed_then) in &observed.positions {
        let tx = (0..txs)
            .find(|&tx| end_lsn(tx) == position)
            .unwrap_or_else(|| panic!("durable() returned {position}, not a transaction end"));
        assert!(
            previous < Some(position),
            "durable() went from {previous:?} to {position}"
        );
        previous = Some(position);
        let messages_through_tx = (tx + 1) * per_tx as u64;
        assert!(
            confirmed_then >= messages_through_tx,
            "durable() returned the end of tx {tx} ({position}) with only {confirmed_then} of its {messages_through_tx} messages confirmed"
        );
    }
    assert_eq!(observed.drained, Some(end_lsn(txs - 1)), "drain position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_message_has_the_contract_routing_key_properties_and_body() {
    init_tracing();
    let url = shared_amqp_url();
    let exchange = unique("encode");
    let queue = BoundQueue::declare(&url, &exchange, &unique("encode.q")).await;
    let mut publisher = connect(&config(&url, &exchange, 16, 1000)).await;

    let sent = event(TABLE, 7, 3);
    publisher.send(sent.clone()).await.unwrap();
    publisher.end_transaction(end_lsn(7)).await.unwrap();
    let durable = timeout(Duration::from_secs(10), publisher.durable())
        .await
        .expect("confirm within 10 s")
        .unwrap();
    assert_eq!(durable, end_lsn(7));
    assert!(
        timeout(Duration::from_millis(300), publisher.durable())
            .await
            .is_err(),
        "durable() waits while the position does not move"
    );

    let deliveries = queue.read(1, Duration::from_secs(10)).await;
    assert_eq!(deliveries.len(), 1);
    let d = &deliveries[0];
    assert_eq!(d.exchange.as_str(), exchange);
    assert_eq!(d.routing_key.as_str(), "public.orders.insert");
    assert_eq!(
        d.data,
        sent.to_json(),
        "body is the event's JSON, byte for byte"
    );
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.message_id().as_ref().unwrap().as_str(),
        sent.id.to_string()
    );
    assert_eq!(
        *p.timestamp(),
        Some((sent.commit_time.unix_micros() / 1_000_000) as u64)
    );
    assert_eq!(p.app_id().as_ref().unwrap().as_str(), "walcast");
    assert_eq!(*p, encode(&sent).properties, "no other property is set");

    publisher.close().await;
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_arrive_in_order_and_durable_follows_confirms() {
    init_tracing();
    let url = shared_amqp_url();
    let exchange = unique("order");
    let queue = BoundQueue::declare(&url, &exchange, &unique("order.q")).await;
    let publisher = connect(&config(&url, &exchange, 512, 1000)).await;
    let stats = publisher.stats();
    let (txs, per_tx) = (2000u64, 10u32);

    let started = Instant::now();
    let (publisher, observed) = timeout(
        Duration::from_secs(120),
        produce(publisher, txs, per_tx, Arc::default()),
    )
    .await
    .expect("20,000 events published within 120 s");
    let elapsed = started.elapsed();
    check_positions(&observed, txs, per_tx);
    assert!(
        observed.positions.len() > 1,
        "durable() moved along the way, not only at the end"
    );

    let ids = queue
        .read_distinct_ids(20_000, Duration::from_secs(60))
        .await;
    let expected: Vec<String> = (0..txs)
        .flat_map(|tx| (0..per_tx).map(move |o| event(TABLE, tx, o).id.to_string()))
        .collect();
    assert_eq!(ids.len(), expected.len(), "no message lost or duplicated");
    assert!(ids == expected, "messages arrive in commit order");
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.confirmed, 20_000);
    assert_eq!(snapshot.republished, 0);
    eprintln!(
        "published 20,000 events in {elapsed:?}; mean confirm latency {:?}",
        snapshot.mean_confirm_latency()
    );

    publisher.close().await;
    queue.delete().await;
}

/// Declares a durable queue bound to `exchange` (it must exist before the
/// first publish), then closes the connection: a broker restart would kill
/// it. [`survive_outage`] reads the queue on a new connection.
async fn declare_queue(url: &str, exchange: &str) -> String {
    let queue = unique(&format!("{exchange}.q"));
    BoundQueue::declare(url, exchange, &queue)
        .await
        .close()
        .await;
    queue
}

/// Runs a producer of `txs` x `per_tx` events, calls `outage` once
/// `outage_after` events were sent, and checks that every event reached the
/// queue at least once and that `send` resumed after the outage.
async fn survive_outage<Fut>(
    publisher: Publisher,
    (url, exchange, queue): (&str, &str, &str),
    (txs, per_tx): (u64, u32),
    outage_after: u64,
    outage: impl FnOnce(Arc<AtomicU64>) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    let stats = publisher.stats();
    let sent = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(publisher, txs, per_tx, sent.clone()));
    timeout(Duration::from_secs(60), async {
        while sent.load(Ordering::SeqCst) < outage_after {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("producer got going");
    outage(sent.clone()).await;

    let (publisher, observed) = timeout(Duration::from_secs(120), producer)
        .await
        .expect("producer finished within 120 s after the outage")
        .unwrap();
    let total = txs * per_tx as u64;
    assert_eq!(sent.load(Ordering::SeqCst), total);
    check_positions(&observed, txs, per_tx);
    let snapshot = stats.snapshot();
    assert!(snapshot.reconnects >= 1, "reconnected: {snapshot:?}");
    assert!(snapshot.confirmed >= total, "{snapshot:?}");
    publisher.close().await;

    let queue = BoundQueue::declare(url, exchange, queue).await;
    let ids = queue
        .read_distinct_ids(total as usize, Duration::from_secs(60))
        .await;
    queue.delete().await;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len() as u64,
        total,
        "every event reached the queue at least once ({} deliveries)",
        ids.len()
    );
    eprintln!("{} deliveries for {total} events; {snapshot:?}", ids.len());
}

/// `send` makes no progress for `quiet`: the window is full and nothing is
/// confirmed.
async fn assert_send_stalls(sent: &AtomicU64, quiet: Duration) {
    // Let the window fill first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sent.load(Ordering::SeqCst);
    tokio::time::sleep(quiet).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        before,
        "send kept completing during the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_no_event() {
    init_tracing();
    let node = Arc::new(
        tokio::task::spawn_blocking(|| RabbitNode::start("pub"))
            .await
            .unwrap(),
    );
    let url = node.url();
    let exchange = unique("restart");
    let queue = declare_queue(&url, &exchange).await;
    let publisher = connect(&config(&url, &exchange, 256, 1000)).await;

    let restart = node.clone();
    survive_outage(
        publisher,
        (&url, &exchange, &queue),
        (1000, 20),
        5000,
        |sent| async move {
            let n = restart.clone();
            tokio::task::spawn_blocking(move || n.stop_app())
                .await
                .unwrap();
            let down = Instant::now();
            assert_send_stalls(&sent, Duration::from_millis(1500)).await;
            tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
            tokio::task::spawn_blocking(move || restart.start_app())
                .await
                .unwrap();
        },
    )
    .await;
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_for_ten_seconds_loses_no_event() {
    init_tracing();
    let url = shared_amqp_url();
    let proxy = TcpProxy::start(shared_amqp_addr()).await;
    let exchange = unique("cut");
    let queue = declare_queue(&url, &exchange).await;
    let publisher = connect(&config(&via_port(&url, proxy.port()), &exchange, 256, 1000)).await;

    let proxy = &proxy;
    survive_outage(
        publisher,
        (&url, &exchange, &queue),
        (1000, 20),
        5000,
        |sent| async move {
            let refused_before = proxy.refused();
            proxy.cut_for(Duration::from_secs(10));
            assert_send_stalls(&sent, Duration::from_secs(2)).await;
            assert!(proxy.refused() > refused_before, "publisher kept retrying");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_bounds_unconfirmed_messages_while_the_broker_is_unreachable() {
    init_tracing();
    let url = shared_amqp_url();
    let proxy = TcpProxy::start(shared_amqp_addr()).await;
    let exchange = unique("window");
    let queue = BoundQueue::declare(&url, &exchange, &unique("window.q")).await;
    const WINDOW: u32 = 8;
    let mut publisher = connect(&config(
        &via_port(&url, proxy.port()),
        &exchange,
        WINDOW as usize,
        500,
    ))
    .await;

    proxy.cut();
    for ordinal in 0..WINDOW {
        timeout(
            Duration::from_secs(5),
            publisher.send(event(TABLE, 1, ordinal)),
        )
        .await
        .expect("a send within the window does not wait")
        .unwrap();
    }
    publisher.end_transaction(end_lsn(1)).await.unwrap();
    assert_eq!(publisher.unconfirmed(), WINDOW as u64);
    let blocked = timeout(Duration::from_secs(2), publisher.send(event(TABLE, 2, 0))).await;
    assert!(
        blocked.is_err(),
        "send of window + 1 completed while the broker was unreachable"
    );
    assert!(
        timeout(Duration::from_millis(200), publisher.durable())
            .await
            .is_err(),
        "nothing is durable while nothing is confirmed"
    );

    proxy.resume();
    timeout(Duration::from_secs(30), publisher.send(event(TABLE, 2, 0)))
        .await
        .expect("send resumes once the broker is back")
        .unwrap();
    publisher.end_transaction(end_lsn(2)).await.unwrap();
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .expect("drain within 30 s")
        .unwrap();
    assert_eq!(drained, Some(end_lsn(2)));

    let ids = queue
        .read_distinct_ids(WINDOW as usize + 1, Duration::from_secs(10))
        .await;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), WINDOW as usize + 1);
    publisher.close().await;
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_after_its_timeout_once_shutdown_is_requested() {
    init_tracing();
    let url = shared_amqp_url();
    let proxy = TcpProxy::start(shared_amqp_addr()).await;
    let exchange = unique("drain");
    let shutdown = CancellationToken::new();
    let mut publisher = timeout(
        Duration::from_secs(30),
        Publisher::connect(
            &config(&via_port(&url, proxy.port()), &exchange, 64, 500),
            shutdown.clone(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    publisher.set_drain_timeout(Duration::from_secs(1));

    publisher.send(event(TABLE, 1, 0)).await.unwrap();
    publisher.end_transaction(end_lsn(1)).await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(10), publisher.durable())
            .await
            .unwrap()
            .unwrap(),
        end_lsn(1)
    );
    proxy.cut();
    publisher.send(event(TABLE, 2, 0)).await.unwrap();
    publisher.end_transaction(end_lsn(2)).await.unwrap();

    shutdown.cancel();
    let started = Instant::now();
    let drained = timeout(Duration::from_secs(10), publisher.drain())
        .await
        .expect("drain honours its timeout")
        .unwrap();
    assert_eq!(
        drained,
        Some(end_lsn(1)),
        "only what was confirmed is durable"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A send that would wait for the window gives up on shutdown instead
    // of hanging the capture loop: 1 of 64 slots is taken.
    let refused = timeout(Duration::from_secs(5), async {
        for ordinal in 0..100 {
            if let Err(e) = publisher.send(event(TABLE, 3, ordinal)).await {
                return (ordinal, e);
            }
        }
        panic!("100 sends accepted with a window of 64");
    })
    .await
    .expect("send returns on shutdown");
    assert_eq!(refused.0, 63);
    assert!(
        matches!(refused.1, PublishError::Shutdown),
        "{:?}",
        refused.1
    );
    publisher.close().await;
    let cleanup = BoundQueue::declare(&url, &exchange, &unique("drain.q")).await;
    cleanup.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_fast_with_a_clear_error() {
    init_tracing();
    let url = shared_amqp_url().replace("guest:guest@", "guest:wrong-secret@");
    let started = Instant::now();
    let result = timeout(
        Duration::from_secs(10),
        Publisher::connect(
            &config(&url, &unique("auth"), 8, 30_000),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("bad credentials are not retried");
    let error = result.expect_err("connect with a wrong password");
    let message = error.to_string();
    eprintln!("{message} ({:?})", started.elapsed());
    assert!(
        matches!(error, PublishError::AccessRefused { .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(message.contains("credentials"), "{message}");
    assert!(
        !message.contains("wrong-secret"),
        "password leaked: {message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let url = shared_amqp_url().replace("/%2f", "/walcast-no-such-vhost");
    let error = timeout(
        Duration::from_secs(10),
        Publisher::connect(
            &config(&url, &unique("auth"), 8, 30_000),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a missing vhost is not retried")
    .expect_err("connect to a missing vhost");
    assert!(
        matches!(error, PublishError::AccessRefused { .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_alarm_blocks_send_until_it_clears() {
    init_tracing();
    let node = Arc::new(
        tokio::task::spawn_blocking(|| RabbitNode::start("pub"))
            .await
            .unwrap(),
    );
    let url = node.url();
    let exchange = unique("alarm");
    let queue = BoundQueue::declare(&url, &exchange, &unique("alarm.q")).await;
    const WINDOW: u32 = 16;
    let mut publisher = connect(&config(&url, &exchange, WINDOW as usize, 500)).await;
    let stats = publisher.stats();

    let n = node.clone();
    tokio::task::spawn_blocking(move || n.set_memory_watermark(0.0))
        .await
        .unwrap();
    let mut sent = 0;
    let stalled = timeout(Duration::from_secs(4), async {
        for ordinal in 0..(WINDOW * 4) {
            publisher.send(event(TABLE, 1, ordinal)).await.unwrap();
            sent += 1;
        }
    })
    .await;
    assert!(
        stalled.is_err(),
        "send did not wait while the broker was blocked"
    );
    assert!(
        sent <= WINDOW,
        "{sent} messages accepted with a window of {WINDOW}"
    );
    assert!(stats.snapshot().blocked, "{:?}", stats.snapshot());

    let n = node.clone();
    tokio::task::spawn_blocking(move || n.set_memory_watermark(0.4))
        .await
        .unwrap();
    for ordinal in sent..(WINDOW * 4) {
        timeout(
            Duration::from_secs(30),
            publisher.send(event(TABLE, 1, ordinal)),
        )
        .await
        .expect("send resumes once the alarm clears")
        .unwrap();
    }
    publisher.end_transaction(end_lsn(1)).await.unwrap();
    let drained = timeout(Duration::from_secs(30), publisher.drain())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(drained, Some(end_lsn(1)));
    assert!(!stats.snapshot().blocked);
    let ids = queue
        .read_distinct_ids(WINDOW as usize * 4, Duration::from_secs(10))
        .await;
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        WINDOW as usize * 4
    );
    publisher.close().await;
    queue.delete().await;
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_an_unreachable_broker_and_gives_up_on_shutdown() {
    init_tracing();
    let url = shared_amqp_url();
    let proxy = TcpProxy::start(shared_amqp_addr()).await;
    let exchange = unique("connect");
    let config = config(&via_port(&url, proxy.port()), &exchange, 8, 300);

    proxy.cut();
    let shutdown = CancellationToken::new();
    let connecting = tokio::spawn({
        let (config, shutdown) = (config.clone(), shutdown.clone());
        async move { Publisher::connect(&config, shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !connecting.is_finished(),
        "connect gave up on an unreachable broker"
    );
    assert!(
        proxy.refused() >= 2,
        "connect retried ({} attempts)",
        proxy.refused()
    );
    shutdown.cancel();
    let result = timeout(Duration::from_secs(5), connecting)
        .await
        .expect("connect returns on shutdown")
        .unwrap();
    assert!(matches!(result, Err(PublishError::Shutdown)), "{result:?}");

    let connecting = tokio::spawn({
        let config = config.clone();
        async move { Publisher::connect(&config, CancellationToken::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.resume();
    let publisher = timeout(Duration::from_secs(10), connecting)
        .await
        .expect("connect succeeds once the broker is reachable")
        .unwrap()
        .expect("connect");
    publisher.close().await;
    BoundQueue::declare(&url, &exchange, &unique("connect.q"))
        .await
        .delete()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_are_republished_until_the_broker_takes_them() {
    init_tracing();
    let url = shared_amqp_url();
    let exchange = unique("nack");
    // A full queue with reject-publish makes the broker nack.
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(3));
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    let queue = BoundQueue::declare_with(&url, &exchange, &unique("nack.q"), arguments).await;
    let mut publisher = connect(&config(&url, &exchange, 64, 200)).await;
    let stats = publisher.stats();

    const EVENTS: u32 = 12;
    for ordinal in 0..EVENTS {
        publisher.send(event(TABLE, 1, ordinal)).await.unwrap();
    }
    publisher.end_transaction(end_lsn(1)).await.unwrap();
    support::poll(Duration::from_secs(10), || async {
        stats.snapshot().nacked > 0
    })
    .await
    .expect("the broker nacks publishes to a full queue");
    assert!(
        timeout(Duration::from_millis(300), publisher.durable())
            .await
            .is_err(),
        "a transaction with nacked messages is not durable"
    );

    // Consuming makes room; the republished messages get in.
    let reader = tokio::spawn(async move {
        let ids = queue
            .read_distinct_ids(EVENTS as usize, Duration::from_secs(60))
            .await;
        (queue, ids)
    });
    let drained = timeout(Duration::from_secs(60), publisher.drain())
        .await
        .expect("everything confirmed once the queue has room")
        .unwrap();
    assert_eq!(drained, Some(end_lsn(1)));
    let (queue, ids) = reader.await.unwrap();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        EVENTS as usize,
        "no nacked message was skipped"
    );
    let snapshot = stats.snapshot();
    assert!(snapshot.republished > 0, "{snapshot:?}");
    eprintln!("{snapshot:?}");
    publisher.close().await;
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_streams_through_the_window() {
    init_tracing();
    let url = shared_amqp_url();
    let exchange = unique("large");
    const WINDOW: usize = 128;
    const ROWS: u32 = 30_000;
    let mut publisher = connect(&config(&url, &exchange, WINDOW, 1000)).await;
    let stats = publisher.stats();

    timeout(Duration::from_secs(120), async {
        for ordinal in 0..ROWS {
            publisher.send(event(TABLE, 1, ordinal)).await.unwrap();
            assert!(publisher.unconfirmed() <= WINDOW as u64);
            if ordinal % 1000 == 0 {
                assert_eq!(
                    durable_now(&mut publisher).await,
                    None,
                    "nothing inside an open transaction is durable"
                );
            }
        }
    })
    .await
    .expect("30,000 rows streamed within 120 s");
    assert!(
        stats.snapshot().confirmed >= (ROWS as u64 - WINDOW as u64),
        "rows were confirmed while the transaction was still open"
    );
    publisher.end_transaction(end_lsn(1)).await.unwrap();
    let durable = timeout(Duration::from_secs(30), publisher.durable())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(durable, end_lsn(1));
    publisher.close().await;
    BoundQueue::declare(&url, &exchange, &unique("large.q"))
        .await
        .delete()
        .await;
}
