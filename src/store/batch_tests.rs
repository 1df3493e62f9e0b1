//! The batch writer's gathering, without a database.

use std::sync::Mutex;

use super::*;

/// Each batch's items, as the writer saw them.
type Seen = Arc<Mutex<Vec<Vec<u32>>>>;

/// A batcher whose writer records each batch's items and answers each item × 10.
fn recording(gate: &WriteGate, max_batch: usize) -> (Batcher<u32, u32>, Seen) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    // Each item weighs itself.
    let bounds = Bounds { items: max_batch, weight: 100, weigh: |i: &u32| *i as usize };
    let batcher = Batcher::spawn(gate.clone(), bounds, move |items: Vec<u32>| {
        seen.lock().unwrap().push(items.clone());
        async move { items.into_iter().map(|i| i * 10).collect() }
    });
    (batcher, batches)
}

/// A batcher whose gate's only place is held (as by a write in flight): the gate, the
/// batcher, what it wrote, the held place.
async fn busy(max_waiting: usize, wait: Duration, max_batch: usize) -> (WriteGate, Arc<Batcher<u32, u32>>, Seen, OwnedSemaphorePermit) {
    let gate = WriteGate::new(1, max_waiting, wait);
    let (batcher, batches) = recording(&gate, max_batch);
    let held = gate.places.clone().acquire_owned().await.unwrap();
    (gate, Arc::new(batcher), batches, held)
}

/// Submits `item` from a task of its own.
fn submit_apart(batcher: &Arc<Batcher<u32, u32>>, item: u32) -> tokio::task::JoinHandle<Result<u32, Refused>> {
    let batcher = batcher.clone();
    tokio::spawn(async move { batcher.submit(item).await })
}

async fn until_waiting(gate: &WriteGate, n: usize) {
    while gate.waiting() != n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_writer_writes_the_first_job_at_once_and_alone() {
    let gate = WriteGate::new(1, 0, Duration::from_secs(1));
    let (batcher, batches) = recording(&gate, 64);
    let before = tokio::time::Instant::now();
    assert_eq!(batcher.submit(7).await, Ok(70));
    assert_eq!(batcher.submit(8).await, Ok(80));
    assert_eq!(tokio::time::Instant::now(), before, "no timer");
    assert_eq!(*batches.lock().unwrap(), [vec![7], vec![8]]);
    assert_eq!(gate.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn jobs_queued_while_no_place_is_free_go_together_up_to_the_bound_each_with_its_result() {
    let (gate, batcher, batches, held) = busy(0, Duration::from_secs(60), 4).await;
    let calls: Vec<_> = (1..=10).map(|i| submit_apart(&batcher, i)).collect();
    until_waiting(&gate, 10).await;
    drop(held);
    for (i, call) in (1..=10).zip(calls) {
        assert_eq!(call.await.unwrap(), Ok(i * 10));
    }
    let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [4, 4, 2]);
    let all: Vec<u32> = batches.lock().unwrap().concat();
    assert_eq!(all, (1..=10).collect::<Vec<_>>(), "each job once, in order");
}

#[tokio::test(start_paused = true)]
async fn a_batch_weighs_at_most_its_bound_and_the_job_that_does_not_fit_leads_the_next() {
    let (gate, batcher, batches, held) = busy(0, Duration::from_secs(60), 64).await;
    let weights = [60, 30, 20, 150, 10, 90];
    let calls: Vec<_> = weights.iter().map(|w| submit_apart(&batcher, *w)).collect();
    until_waiting(&gate, weights.len()).await;
    drop(held);
    for (w, call) in weights.iter().zip(calls) {
        assert_eq!(call.await.unwrap(), Ok(w * 10));
    }
    // 60+30 = 90 (20 more is 110); 20 alone (150 more); 150 alone, over the bound
    // itself; 10+90 = 100.
    assert_eq!(*batches.lock().unwrap(), [vec![60, 30], vec![20], vec![150], vec![10, 90]]);
}

#[tokio::test(start_paused = true)]
async fn a_job_no_batch_takes_in_time_is_refused_and_never_written_and_a_full_queue_refuses_at_once() {
    let (gate, batcher, batches, held) = busy(2, Duration::from_millis(200), 64).await;
    let waiter = submit_apart(&batcher, 1);
    let second = submit_apart(&batcher, 2);
    until_waiting(&gate, 2).await;
    assert!(gate.full());
    let before = tokio::time::Instant::now();
    assert_eq!(batcher.submit(3).await, Err(Refused::Full));
    assert_eq!(tokio::time::Instant::now(), before, "refused without waiting");
    assert_eq!(waiter.await.unwrap(), Err(Refused::TimedOut));
    assert_eq!(second.await.unwrap(), Err(Refused::TimedOut));
    assert_eq!(gate.waiting(), 0);
    drop(held);
    assert_eq!(batcher.submit(4).await, Ok(40));
    assert_eq!(*batches.lock().unwrap(), [vec![4]], "the refused jobs were never written");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_while_queued_leaves_the_queue_and_its_job_is_not_written() {
    let (gate, batcher, batches, held) = busy(0, Duration::from_secs(60), 64).await;
    let gone = submit_apart(&batcher, 1);
    until_waiting(&gate, 1).await;
    gone.abort();
    until_waiting(&gate, 0).await;
    drop(held);
    assert_eq!(batcher.submit(2).await, Ok(20));
    assert_eq!(*batches.lock().unwrap(), [vec![2]]);
}

#[tokio::test(start_paused = true)]
async fn a_write_of_its_own_waits_in_the_same_queue() {
    let gate = WriteGate::new(1, 1, Duration::from_millis(100));
    let held = gate.place().await.expect("a free place");
    let waiting = tokio::spawn({
        let g = gate.clone();
        async move { g.place().await.is_some() }
    });
    until_waiting(&gate, 1).await;
    assert!(gate.place().await.is_none(), "the queue is full");
    assert!(!waiting.await.unwrap(), "no place freed in time");
    drop(held);
    assert!(gate.place().await.is_some());
}
