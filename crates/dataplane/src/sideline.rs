//! What a connection's task waits on besides its socket: the server's shutdown signal and the
//! connection's watchdog tick.
//!
//! Both rarely fire, while the socket wakes the task several times per request. Polled side by
//! side with the connection (as `select!` would), they would be polled on every one of those
//! wake-ups, each poll re-registering its waker (a lock for the shutdown signal's, an atomic
//! exchange for the timer's). Here they get a waker of their own that notes it fired before it
//! wakes the task, and are polled only then.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use tokio::time::Interval;

/// What woke the task, besides its connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The server is shutting down (reported once).
    Stop,
    /// The watchdog's ticker ticked.
    Tick,
}

/// Whichever came first.
pub(crate) enum Next<T> {
    /// The connection's future finished.
    Done(T),
    Side(Side),
}

/// The shutdown signal and the ticker, polled only when they woke the task.
pub(crate) struct Sideline {
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ticker: Interval,
    flag: Arc<Flag>,
    /// Wakes through `flag`.
    waker: Waker,
    /// The task's waker, as last handed to `flag`.
    task: Option<Waker>,
}

/// Set when the shutdown signal or the ticker wakes the task.
#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

impl Sideline {
    pub(crate) fn new(stop: impl Future<Output = ()> + Send + 'static, ticker: Interval) -> Self {
        let flag = Arc::new(Flag::default());
        Sideline {
            stop: Some(Box::pin(stop)),
            ticker,
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }

    /// Whether the shutdown signal has been reported.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.is_none()
    }

    fn poll_side(&mut self, cx: &mut Context<'_>) -> Poll<Side> {
        // A task's waker does not change between polls; when it does (the first poll), both
        // are polled so that they register theirs.
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *self
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            self.task = Some(cx.waker().clone());
            self.flag.woken.store(true, SeqCst);
        }
        if !self.flag.woken.load(SeqCst) || !self.flag.woken.swap(false, SeqCst) {
            return Poll::Pending;
        }
        let mut side = Context::from_waker(&self.waker);
        let fired = if let Some(stop) = &mut self.stop
            && stop.as_mut().poll(&mut side).is_ready()
        {
            self.stop = None;
            Side::Stop
        } else if self.ticker.poll_tick(&mut side).is_ready() {
            Side::Tick
        } else {
            return Poll::Pending;
        };
        // The other one was perhaps not polled this time: it is, next time.
        self.flag.woken.store(true, SeqCst);
        Poll::Ready(fired)
    }

    /// Waits for `main` to finish or for a side event, `main` first.
    pub(crate) async fn next<F: Future + Unpin>(&mut self, main: &mut F) -> Next<F::Output> {
        poll_fn(|cx| {
            if let Poll::Ready(out) = Pin::new(&mut *main).poll(cx) {
                return Poll::Ready(Next::Done(out));
            }
            self.poll_side(cx).map(Next::Side)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// `next`, failing the test instead of hanging when nothing wakes the task.
    async fn next<F: Future + Unpin>(side: &mut Sideline, main: &mut F) -> Next<F::Output> {
        tokio::time::timeout(Duration::from_secs(10), side.next(main))
            .await
            .expect("the task was not woken")
    }

    #[tokio::test]
    async fn side_events_come_once_each_and_the_main_future_first() {
        let (tx, rx) = oneshot::channel::<()>();
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        ticker.reset(); // the first tick a period from now
        let mut side = Sideline::new(
            async move {
                let _ = rx.await;
            },
            ticker,
        );
        let (done_tx, mut done) = oneshot::channel::<u32>();

        // Nothing ready: the ticker is what comes.
        assert!(matches!(
            next(&mut side, &mut done).await,
            Next::Side(Side::Tick)
        ));
        tx.send(()).unwrap();
        assert!(matches!(
            next(&mut side, &mut done).await,
            Next::Side(Side::Stop)
        ));
        assert!(side.stopped());
        assert!(matches!(
            next(&mut side, &mut done).await,
            Next::Side(Side::Tick)
        ));
        done_tx.send(7).unwrap();
        assert!(matches!(
            next(&mut side, &mut done).await,
            Next::Done(Ok(7))
        ));
    }

    #[tokio::test]
    async fn a_stop_from_another_thread_wakes_the_task() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        ticker.reset();
        let mut rx = rx;
        let mut side = Sideline::new(
            async move {
                let _ = rx.changed().await;
            },
            ticker,
        );
        let mut never = std::future::pending::<()>();
        let sender = std::thread::spawn(move || tx.send(true).unwrap());
        assert!(matches!(
            next(&mut side, &mut never).await,
            Next::Side(Side::Stop)
        ));
        sender.join().unwrap();
    }
}
