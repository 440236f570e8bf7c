//! Group commit: one task owns all writes and commits whatever queued up meanwhile as one
//! transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{Db, DbError, Write};

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), DbError>>,
}

/// Counters of the commit task, read by `/metrics`.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub transactions: AtomicU64,
    pub jobs: AtomicU64,
    pub failures: AtomicU64,
    /// Total microseconds spent in commits.
    pub commit_micros: AtomicU64,
    /// Jobs waiting in the queue right now.
    pub queued: AtomicU64,
}

/// Cluster mode: what makes a commit safe for the regions it touches. For a batch of writes it
/// answers the fences to commit with them (`Write::Fence`, one per region touched, at the epoch
/// of this node's lease), or `DbError::Fenced` at once when this node does not hold a lease for
/// one of them.
pub trait Fencer: Send + Sync {
    fn fences(&self, writes: &[Write]) -> Result<Vec<Write>, DbError>;
}

/// A handle that queues writes for the commit task. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    stats: Arc<CommitStats>,
    fencer: Arc<std::sync::OnceLock<Arc<dyn Fencer>>>,
}

impl Committer {
    /// Starts the commit task. It stops once every `Committer` clone is dropped and the queue is
    /// drained; await the handle to know the last commit is done.
    pub fn spawn(db: Db, max_batch: usize, queue: usize) -> (Committer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue);
        let stats = Arc::new(CommitStats::default());
        let handle = tokio::spawn(run(db, rx, max_batch.max(1), stats.clone()));
        (Committer { tx, stats, fencer: Arc::default() }, handle)
    }

    /// Cluster mode: from now on every commit carries the fences `fencer` answers (set once).
    pub fn set_fencer(&self, fencer: Arc<dyn Fencer>) {
        let _ = self.fencer.set(fencer);
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Commits `writes` (in one transaction with whatever else is queued) and returns once they
    /// are durable.
    pub async fn commit(&self, mut writes: Vec<Write>) -> Result<(), DbError> {
        if writes.is_empty() {
            return Ok(());
        }
        if let Some(fencer) = self.fencer.get() {
            let fences = fencer.fences(&writes)?;
            writes.splice(0..0, fences);
        }
        let (done, wait) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Job { writes, done }).await.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(DbError::Closed);
        }
        wait.await.unwrap_or(Err(DbError::Closed))
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Job>, max_batch: usize, stats: Arc<CommitStats>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        stats.queued.fetch_sub(jobs.len() as u64, Ordering::Relaxed);
        let started = Instant::now();
        let result = db.write_batch(jobs.iter().flat_map(|j| j.writes.iter())).await;
        stats.commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        if let Err(e) = &result {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            if matches!(e, DbError::Fenced(_)) {
                // A region this node lost: its jobs fail, the other regions' are retried below.
                tracing::warn!(error = %e, jobs = jobs.len(), "group commit fenced");
            } else if matches!(e, DbError::Conflict(_)) {
                // A caller's row collides with a stored one (e.g. a reused idempotency key): the
                // other jobs are retried one by one below, and the caller gets the conflict.
                tracing::warn!(error = %e, jobs = jobs.len(), "group commit refused a duplicate");
            } else {
                tracing::error!(error = %e, jobs = jobs.len(), "group commit failed");
            }
            if jobs.len() > 1 && matches!(e, DbError::Conflict(_) | DbError::Rejected(_) | DbError::Fenced(_)) {
                // One bad job must not fail the others: retry each alone. (A database that cannot
                // be reached fails every job at once: retrying each would only make callers wait.)
                for job in jobs.drain(..) {
                    let result = db.write_batch(job.writes.iter()).await;
                    stats.transactions.fetch_add(1, Ordering::Relaxed);
                    if result.is_err() {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = job.done.send(result);
                }
            }
        }
        for job in jobs.drain(..) {
            // A caller that went away no longer needs the answer.
            let _ = job.done.send(result.clone());
        }
    }
}
