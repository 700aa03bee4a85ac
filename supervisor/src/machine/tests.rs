//! Every state of the machine under every kind of event, the crash cases included.

use super::*;

const READY: Duration = Duration::from_secs(30);
const HEALTH: Duration = Duration::from_secs(10);
const PAUSE: Duration = Duration::from_secs(5);
const STOP: Duration = Duration::from_secs(10);
const LIVE: Duration = Duration::from_secs(3);
const DRAIN: Duration = Duration::from_secs(135);

fn timing() -> Timing {
    Timing {
        ready_timeout: READY,
        health_window: HEALTH,
        pause_wait: PAUSE,
        stop_timeout: STOP,
        drain_timeout: DRAIN,
        liveness: Some(LIVE),
        max_memory: Some(MEMORY),
        probe_count: 0,
        refused_margin_percent: crate::machine::REFUSED_MARGIN_PERCENT,
        require_enrollment: true,
    }
}

const MEMORY: u64 = 100 << 20;

/// A machine driven with a clock the test moves.
struct Drive {
    m: Machine,
    now: Instant,
}

impl Drive {
    fn new(orphans: Vec<Pid>) -> Self {
        Self {
            m: Machine::new(timing(), orphans),
            now: Instant::now(),
        }
    }

    /// A machine whose first generation (pid 100) serves.
    fn serving() -> Self {
        let mut d = Self::new(Vec::new());
        assert_eq!(
            d.m.start(),
            vec![Action::Spawn {
                role: Role::Serving,
                binary: Binary::Current
            }]
        );
        d.spawned(Role::Serving, 100);
        let a = d.on(Event::Ready(100));
        assert!(a.contains(&Action::Systemd(Notify::Ready)), "{a:?}");
        assert_eq!(d.m.serving(), &Serving::Ready { pid: 100 });
        d
    }

    fn on(&mut self, event: Event) -> Vec<Action> {
        self.m.handle(self.now, event)
    }

    fn spawned(&mut self, role: Role, pid: Pid) -> Vec<Action> {
        self.on(Event::Spawned { role, pid })
    }

    fn after(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.on(Event::Tick)
    }

    fn exited(&mut self, pid: Pid, how: Exit) -> Vec<Action> {
        self.on(Event::Exited { pid, how })
    }

    fn crash(&mut self, pid: Pid) -> Vec<Action> {
        self.exited(pid, Exit::Failed("signal: 9 (SIGKILL)".into()))
    }

    /// An upgrade asked for and prepared: the successor (pid 200) starts.
    fn upgrade_prepared(&mut self) {
        let a = self.on(Event::Request {
            id: 1,
            request: Request::Upgrade("0.8.0".into()),
        });
        assert_eq!(
            a,
            vec![Action::Job(Job::Prepare {
                kind: Kind::Upgrade,
                asked: Some("0.8.0".into()),
                recall: None
            })]
        );
        assert_eq!(self.m.shown(), Shown::Upgrading);
        let a = self.on(Event::Done(Done::Prepared(Ok(versions()))));
        assert!(
            a.contains(&Action::Signal {
                pid: 100,
                sig: Sig::Winch
            }),
            "{a:?}"
        );
        let a = self.on(Event::Paused(100));
        assert!(
            a.contains(&Action::Spawn {
                role: Role::Successor,
                binary: Binary::Staged
            }),
            "{a:?}"
        );
        self.spawned(Role::Successor, 200);
        assert_eq!(self.m.successor_pid(), Some(200));
    }

    /// The upgrade's new generation took over: the health window runs.
    fn upgrade_watching(&mut self) {
        self.upgrade_prepared();
        self.upgrade_watching_from_prepared();
    }

    /// As [`Self::upgrade_watching`], the successor already started.
    fn upgrade_watching_from_prepared(&mut self) {
        let a = self.on(Event::Ready(200));
        assert!(a.contains(&journal(Step::Swapped)), "{a:?}");
        assert!(a.contains(&Action::Signal {
            pid: 100,
            sig: Sig::Hup
        }));
        assert_eq!(self.m.serving(), &Serving::Ready { pid: 200 });
        assert_eq!(self.m.draining(), &[100]);
        assert!(matches!(
            self.m.change().map(|c| &c.phase),
            Some(Phase::Watching { .. })
        ));
    }
}

fn versions() -> Versions {
    Versions {
        to: "0.8.0".into(),
        from: "0.7.0".into(),
    }
}

fn journal(step: Step) -> Action {
    Action::Journal {
        version: "0.8.0".into(),
        step,
        detail: String::new(),
    }
}

fn replies(a: &[Action]) -> Vec<&Answer> {
    a.iter()
        .filter_map(|x| match x {
            Action::Reply { answer, .. } => Some(answer),
            _ => None,
        })
        .collect()
}

fn refused(a: &[Action]) -> Option<String> {
    replies(a).into_iter().find_map(|r| match r {
        Answer::Refused { why, .. } => Some(why.clone()),
        _ => None,
    })
}

fn undo_of(a: &[Action]) -> Option<(Kind, Cause)> {
    a.iter().find_map(|x| match x {
        Action::Job(Job::Undo { kind, cause, .. }) => Some((*kind, *cause)),
        _ => None,
    })
}

/// Whether `a` starts a commit.
fn commits(a: &[Action]) -> bool {
    a.iter()
        .any(|x| matches!(x, Action::Job(Job::Commit { .. })))
}

/// `pid` says it is enrolled in `enrolled` of `contracts`.
fn enrolled(pid: Pid, enrolled: u32, contracts: u32) -> Event {
    Event::Enrolled {
        pid,
        enrolled,
        contracts,
    }
}

fn exit_code(a: &[Action]) -> Option<u8> {
    a.iter().find_map(|x| match x {
        Action::Exit(c) => Some(*c),
        _ => None,
    })
}

// === the serving generation ===

#[test]
fn first_start_ready_tells_systemd_once_and_drains_orphans() {
    let mut d = Drive::new(vec![7, 8]);
    d.spawned(Role::Serving, 100);
    assert_eq!(d.m.shown(), Shown::Starting);
    assert_eq!(d.m.children(), vec![100, 7, 8], "the ones it answers for");
    let a = d.on(Event::Ready(100));
    for o in [7, 8] {
        assert!(a.contains(&Action::Signal {
            pid: o,
            sig: Sig::Hup
        }));
    }
    assert_eq!(d.m.shown(), Shown::Serving);
    // An orphan that exits leaves the list; a READY from a stranger changes nothing.
    d.exited(7, Exit::Failed("gone".into()));
    assert_eq!(d.m.orphans(), &[8]);
    let a = d.on(Event::Ready(999));
    assert!(!a.contains(&Action::Systemd(Notify::Ready)));
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 100 });
}

#[test]
fn a_generation_that_never_gets_ready_is_stopped_killed_and_counted_as_a_crash() {
    let mut d = Drive::new(Vec::new());
    d.spawned(Role::Serving, 100);
    assert!(d.after(READY - Duration::from_millis(1)).is_empty());
    let a = d.after(Duration::from_millis(1));
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Term
    }));
    assert_eq!(d.m.serving(), &Serving::Abandoned { pid: 100 });
    let a = d.after(STOP);
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Kill
    }));
    // Its exit code says "stopped", but it was abandoned: a crash, restarted after a backoff.
    let a = d.exited(100, Exit::Graceful);
    assert!(a.contains(&Action::CountRestart), "{a:?}");
    assert!(matches!(d.m.serving(), Serving::Restarting { .. }));
    let a = d.after(crate::budget::BACKOFF_BASE);
    assert!(a.contains(&Action::Spawn {
        role: Role::Serving,
        binary: Binary::Current
    }));
}

#[test]
fn a_crash_restarts_after_a_backoff_and_past_the_budget_it_backs_off_and_never_gives_up() {
    let mut d = Drive::serving();
    for (pid, n) in (100..).zip(1..=crate::budget::MAX_CRASHES + 3) {
        let a = d.crash(pid);
        assert!(a.contains(&Action::CountRestart));
        assert!(exit_code(&a).is_none(), "it gave up: {a:?}");
        assert_eq!(d.m.crash_streak(), n);
        let backing_off = a.iter().any(
            |x| matches!(x, Action::Log { warn: true, message } if message.contains("backing off")),
        );
        assert_eq!(backing_off, n > crate::budget::MAX_CRASHES, "{n}: {a:?}");
        let Serving::Restarting { at, .. } = *d.m.serving() else {
            panic!("{:?}", d.m.serving());
        };
        // Nothing starts before the backoff ends.
        assert!(d.after(at - d.now - Duration::from_millis(1)).is_empty());
        let a = d.after(Duration::from_millis(1));
        assert!(a.contains(&Action::Spawn {
            role: Role::Serving,
            binary: Binary::Current
        }));
        d.spawned(Role::Serving, pid + 1);
    }
}

#[test]
fn a_binary_that_cannot_start_counts_as_a_crash() {
    let mut d = Drive::new(Vec::new());
    let a = d.on(Event::SpawnFailed {
        role: Role::Serving,
        why: "exec format error".into(),
    });
    assert!(a.contains(&Action::CountRestart), "{a:?}");
    assert!(matches!(d.m.serving(), Serving::Restarting { .. }));
}

#[test]
fn a_relay_stopped_by_the_operator_stops_the_supervisor_after_the_others() {
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    d.on(Event::Paused(100));
    d.spawned(Role::Successor, 101);
    d.on(Event::Ready(101));
    assert_eq!(d.m.draining(), &[100]);
    let a = d.exited(101, Exit::Graceful);
    assert!(
        a.contains(&Action::Signal {
            pid: 100,
            sig: Sig::Term
        }),
        "{a:?}"
    );
    assert_eq!(exit_code(&a), None, "waits for the draining one");
    let a = d.exited(100, Exit::Graceful);
    assert_eq!(exit_code(&a), Some(exit::OK));
}

#[test]
fn reload_and_dump_go_to_the_serving_generation_and_status_always_answers() {
    let mut d = Drive::serving();
    assert_eq!(
        d.on(Event::Signal(OsSignal::Reload)),
        vec![Action::Signal {
            pid: 100,
            sig: Sig::Usr1
        }]
    );
    let a = d.on(Event::Signal(OsSignal::Dump));
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Usr2
    }));
    assert!(a.contains(&Action::Dump));
    assert_eq!(
        d.m.serving(),
        &Serving::Ready { pid: 100 },
        "USR2 stops nothing"
    );
    for during_a_change in [false, true] {
        if during_a_change {
            d.upgrade_prepared();
        }
        let a = d.on(Event::Request {
            id: 9,
            request: Request::Status,
        });
        assert_eq!(replies(&a), vec![&Answer::Status]);
    }
}

// === stopping ===

#[test]
fn stop_terminates_everyone_kills_the_slow_and_exits_once_all_are_gone() {
    let mut d = Drive::new(vec![7]);
    d.spawned(Role::Serving, 100);
    d.on(Event::Ready(100));
    let a = d.on(Event::Signal(OsSignal::Stop));
    assert!(a.contains(&Action::Systemd(Notify::Stopping)));
    for pid in [100, 7] {
        assert!(
            a.contains(&Action::Signal {
                pid,
                sig: Sig::Term
            }),
            "{a:?}"
        );
    }
    // A second stop changes nothing; requests are refused while stopping.
    assert!(d.on(Event::Signal(OsSignal::Stop)).is_empty());
    let a = d.on(Event::Request {
        id: 3,
        request: Request::Rollback(None),
    });
    assert!(refused(&a).is_some_and(|w| w.contains("stopping")));
    let a = d.after(STOP);
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Kill
    }));
    assert!(a.contains(&Action::Signal {
        pid: 7,
        sig: Sig::Kill
    }));
    assert_eq!(
        exit_code(&d.exited(100, Exit::Failed("signal: 9".into()))),
        None
    );
    assert_eq!(
        exit_code(&d.exited(7, Exit::Failed("gone".into()))),
        Some(exit::OK)
    );
}

#[test]
fn stop_while_restarting_exits_at_once_and_starts_nothing() {
    let mut d = Drive::serving();
    d.crash(100);
    let a = d.on(Event::Signal(OsSignal::Stop));
    assert_eq!(exit_code(&a), Some(exit::OK), "{a:?}");
    assert!(
        !d.after(Duration::from_secs(60))
            .iter()
            .any(|a| matches!(a, Action::Spawn { .. }))
    );
}

// === handover ===

#[test]
fn handover_pauses_starts_the_successor_and_drains_the_old_one() {
    let mut d = Drive::serving();
    let a = d.on(Event::Signal(OsSignal::Handover));
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Winch
    }));
    assert!(
        !a.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "not before the pause"
    );
    // A second HUP meanwhile is refused.
    assert!(
        !d.on(Event::Signal(OsSignal::Handover))
            .iter()
            .any(|a| matches!(
                a,
                Action::Signal {
                    sig: Sig::Winch,
                    ..
                }
            ))
    );
    let a = d.on(Event::Paused(100));
    assert!(a.contains(&Action::Spawn {
        role: Role::Successor,
        binary: Binary::Current
    }));
    d.spawned(Role::Successor, 101);
    assert_eq!(d.m.children(), vec![100, 101]);
    let a = d.on(Event::Ready(101));
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Hup
    }));
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 101 });
    d.exited(100, Exit::Failed("exit status: 0".into()));
    assert!(d.m.draining().is_empty());
    assert_eq!(d.m.shown(), Shown::Serving);
}

#[test]
fn a_pause_nobody_confirms_times_out_and_the_successor_starts_anyway() {
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    assert!(d.after(PAUSE - Duration::from_millis(1)).is_empty());
    let a = d.after(Duration::from_millis(1));
    assert!(a.contains(&Action::Spawn {
        role: Role::Successor,
        binary: Binary::Current
    }));
}

#[test]
fn handover_is_refused_while_starting() {
    let mut d = Drive::new(Vec::new());
    d.spawned(Role::Serving, 100);
    let a = d.on(Event::Signal(OsSignal::Handover));
    assert!(d.m.successor().is_none(), "{a:?}");
}

#[test]
fn a_successor_that_exits_or_never_gets_ready_leaves_the_old_one_serving() {
    for never_ready in [false, true] {
        let mut d = Drive::serving();
        d.on(Event::Signal(OsSignal::Handover));
        d.on(Event::Paused(100));
        d.spawned(Role::Successor, 101);
        let a = if never_ready {
            let a = d.after(READY);
            assert!(
                a.contains(&Action::Signal {
                    pid: 101,
                    sig: Sig::Term
                }),
                "{a:?}"
            );
            a
        } else {
            d.exited(101, Exit::Failed("exit status: 1".into()))
        };
        assert!(
            a.contains(&Action::Signal {
                pid: 100,
                sig: Sig::Cont
            }),
            "{a:?}"
        );
        assert_eq!(d.m.serving(), &Serving::Ready { pid: 100 });
        assert!(d.m.successor().is_none());
    }
}

#[test]
fn a_successor_that_cannot_be_started_leaves_the_old_one_serving() {
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    d.on(Event::Paused(100));
    let a = d.on(Event::SpawnFailed {
        role: Role::Successor,
        why: "no such file".into(),
    });
    assert!(a.contains(&Action::Signal {
        pid: 100,
        sig: Sig::Cont
    }));
    assert!(d.m.successor().is_none());
}

#[test]
fn the_serving_one_dying_during_a_handover_lets_the_successor_take_over() {
    // While it pauses: the successor starts at once.
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    let a = d.crash(100);
    assert!(
        a.contains(&Action::Spawn {
            role: Role::Successor,
            binary: Binary::Current
        }),
        "{a:?}"
    );
    assert_eq!(d.m.serving(), &Serving::Gone);
    d.spawned(Role::Successor, 101);
    let a = d.on(Event::Ready(101));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::Signal { sig: Sig::Hup, .. }))
    );
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 101 });
    // And if the successor then fails too, the committed binary starts again.
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    d.on(Event::Paused(100));
    d.spawned(Role::Successor, 101);
    d.crash(100);
    let a = d.crash(101);
    assert!(
        a.contains(&Action::Spawn {
            role: Role::Serving,
            binary: Binary::Current
        }),
        "{a:?}"
    );
}

// === upgrades ===

#[test]
fn an_upgrade_commits_after_the_health_window() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    assert!(d.after(HEALTH - Duration::from_millis(1)).is_empty());
    let a = d.after(Duration::from_millis(1));
    assert_eq!(
        a,
        vec![
            journal(Step::Committing),
            Action::Job(Job::Commit {
                kind: Kind::Upgrade,
                versions: versions()
            })
        ]
    );
    // Requests meanwhile are refused as busy.
    let busy = d.on(Event::Request {
        id: 2,
        request: Request::Rollback(None),
    });
    assert!(refused(&busy).is_some_and(|w| w.contains("busy")));
    let a = d.on(Event::Done(Done::Committed(Ok(()))));
    assert!(a.contains(&journal(Step::Committed)));
    assert_eq!(replies(&a), vec![&Answer::Ok(versions())]);
    assert!(d.m.change().is_none());
    assert_eq!(d.m.shown(), Shown::Serving);
}

#[test]
fn a_refused_upgrade_changes_nothing() {
    let mut d = Drive::serving();
    d.on(Event::Request {
        id: 1,
        request: Request::Upgrade("0.8.0".into()),
    });
    let a = d.on(Event::Done(Done::Prepared(Err("bad signature".into()))));
    assert_eq!(refused(&a).as_deref(), Some("bad signature"));
    assert!(d.m.change().is_none());
    assert!(d.m.successor().is_none());
}

#[test]
fn an_upgrade_is_refused_unless_the_relay_serves() {
    let mut d = Drive::new(Vec::new());
    d.spawned(Role::Serving, 100);
    let a = d.on(Event::Request {
        id: 1,
        request: Request::Upgrade("0.8.0".into()),
    });
    assert!(refused(&a).is_some_and(|w| w.contains("busy")));
    assert!(d.m.change().is_none());
}

#[test]
fn a_new_version_that_dies_in_its_health_window_is_undone_skipped_and_the_old_binary_restarts() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    let a = d.crash(200);
    assert_eq!(undo_of(&a), Some((Kind::Upgrade, Cause::Failed)));
    assert_eq!(d.m.serving(), &Serving::Waiting);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "not before the undo"
    );
    let a = d.on(Event::Done(Done::Undone));
    assert!(refused(&a).is_some_and(|w| w.contains("inside the health window")));
    assert!(a.contains(&Action::Spawn {
        role: Role::Serving,
        binary: Binary::Current
    }));
    assert!(d.m.change().is_none());
}

#[test]
fn a_new_version_that_fails_at_start_is_undone_and_the_old_one_serves_on() {
    for how in ["exit", "timeout", "spawn"] {
        let mut d = Drive::serving();
        if how == "spawn" {
            d.on(Event::Request {
                id: 1,
                request: Request::Upgrade("0.8.0".into()),
            });
            d.on(Event::Done(Done::Prepared(Ok(versions()))));
            d.on(Event::Paused(100));
        } else {
            d.upgrade_prepared();
        }
        let a = match how {
            "exit" => d.crash(200),
            "timeout" => {
                let a = d.after(READY);
                assert!(a.contains(&Action::Signal {
                    pid: 200,
                    sig: Sig::Term
                }));
                assert!(
                    undo_of(&a).is_none(),
                    "undone while it may still write the home"
                );
                d.exited(200, Exit::Graceful)
            }
            _ => d.on(Event::SpawnFailed {
                role: Role::Successor,
                why: "exec format error".into(),
            }),
        };
        assert_eq!(
            undo_of(&a),
            Some((Kind::Upgrade, Cause::Failed)),
            "{how}: {a:?}"
        );
        assert!(
            !a.contains(&Action::Signal {
                pid: 100,
                sig: Sig::Cont
            }),
            "heartbeats resume once the change is undone"
        );
        let a = d.on(Event::Done(Done::Undone));
        assert!(
            refused(&a).is_some_and(|w| w.contains("at start")),
            "{how}: {a:?}"
        );
        assert!(a.contains(&Action::Signal {
            pid: 100,
            sig: Sig::Cont
        }));
        assert!(!a.iter().any(|a| matches!(a, Action::Spawn { .. })));
        assert_eq!(d.m.serving(), &Serving::Ready { pid: 100 });
    }
}

#[test]
fn the_old_one_dying_while_the_new_one_starts_then_the_new_one_failing_restarts_the_old_binary() {
    let mut d = Drive::serving();
    d.upgrade_prepared();
    d.crash(100);
    assert_eq!(d.m.serving(), &Serving::Gone);
    let a = d.crash(200);
    assert_eq!(undo_of(&a), Some((Kind::Upgrade, Cause::Failed)));
    let a = d.on(Event::Done(Done::Undone));
    assert!(a.contains(&Action::Spawn {
        role: Role::Serving,
        binary: Binary::Current
    }));
}

#[test]
fn a_relay_that_crashes_while_a_release_is_prepared_is_replaced_by_the_new_version() {
    let mut d = Drive::serving();
    d.on(Event::Request {
        id: 1,
        request: Request::Upgrade("0.8.0".into()),
    });
    assert_eq!(
        d.m.victim(true),
        None,
        "the new generation does not exist yet"
    );
    assert_eq!(d.m.victim(false), Some(100));
    d.crash(100);
    assert!(matches!(d.m.serving(), Serving::Restarting { .. }));
    let a = d.on(Event::Done(Done::Prepared(Ok(versions()))));
    assert!(
        a.contains(&Action::Spawn {
            role: Role::Successor,
            binary: Binary::Staged
        }),
        "{a:?}"
    );
    assert_eq!(
        d.m.serving(),
        &Serving::Gone,
        "the restart is not waited for"
    );
    assert!(!d.after(Duration::from_secs(20)).iter().any(|a| matches!(
        a,
        Action::Spawn {
            role: Role::Serving,
            ..
        }
    )));
    d.spawned(Role::Successor, 200);
    let a = d.on(Event::Ready(200));
    assert!(a.contains(&journal(Step::Swapped)));
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 200 });
}

#[test]
fn a_relay_that_dies_during_the_commit_starts_again_from_the_committed_binary() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    d.after(HEALTH);
    let a = d.crash(200);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Spawn { .. })),
        "not before the commit"
    );
    assert_eq!(d.m.serving(), &Serving::Waiting);
    let a = d.on(Event::Done(Done::Committed(Ok(()))));
    assert!(a.contains(&Action::Spawn {
        role: Role::Serving,
        binary: Binary::Current
    }));
    assert_eq!(replies(&a), vec![&Answer::Ok(versions())]);
}

#[test]
fn a_failed_commit_is_journaled_answered_and_tried_again_while_the_new_version_serves() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    d.after(HEALTH);
    let a = d.on(Event::Done(Done::Committed(Err("disk full".into()))));
    assert!(a.contains(&Action::Journal {
        version: "0.8.0".into(),
        step: Step::CommitFailed,
        detail: "disk full".into()
    }));
    assert!(refused(&a).is_some_and(|w| w.contains("disk full")));
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 200 });
    // The new version crashing meanwhile restarts from its verified copy (not committed), after
    // the backoff.
    let a = d.crash(200);
    assert!(a.contains(&Action::CountRestart), "{a:?}");
    let a = d.after(crate::budget::BACKOFF_BASE);
    assert!(
        a.contains(&Action::Spawn {
            role: Role::Serving,
            binary: Binary::Staged
        }),
        "{a:?}"
    );
    d.spawned(Role::Serving, 201);
    let a = d.after(crate::machine::COMMIT_RETRY);
    assert!(a.contains(&journal(Step::Committing)), "{a:?}");
    let a = d.on(Event::Done(Done::Committed(Ok(()))));
    assert!(a.contains(&journal(Step::Committed)));
    assert!(d.m.change().is_none());
}

#[test]
fn a_new_version_that_hangs_while_its_commit_waits_is_replaced_from_its_verified_copy() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    d.after(HEALTH);
    d.on(Event::Done(Done::Committed(Err("disk full".into()))));
    d.on(Event::Alive(200));
    let a = d.after(LIVE + Duration::from_millis(1));
    assert!(a.contains(&Action::CountHung), "{a:?}");
    assert!(
        a.contains(&Action::Spawn {
            role: Role::Successor,
            binary: Binary::Staged
        }),
        "the same verified bytes, not the old binary: {a:?}"
    );
    d.spawned(Role::Successor, 201);
    let a = d.on(Event::Ready(201));
    assert!(
        a.contains(&Action::Signal {
            pid: 200,
            sig: Sig::Hup
        }),
        "{a:?}"
    );
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 201 });
    // The commit is still tried again, and finishes the change.
    let a = d.after(crate::machine::COMMIT_RETRY);
    assert!(a.contains(&journal(Step::Committing)), "{a:?}");
    let a = d.on(Event::Done(Done::Committed(Ok(()))));
    assert!(a.contains(&journal(Step::Committed)), "{a:?}");
    assert!(d.m.change().is_none());
}

#[test]
fn a_stop_while_a_commit_waits_for_its_retry_exits_and_leaves_it_to_the_next_start() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    d.after(HEALTH);
    d.on(Event::Done(Done::Committed(Err("disk full".into()))));
    d.on(Event::Signal(OsSignal::Stop));
    d.exited(100, Exit::Graceful);
    let a = d.exited(200, Exit::Graceful);
    assert_eq!(exit_code(&a), Some(exit::OK), "{a:?}");
}

#[test]
fn a_draining_generation_that_never_ends_is_killed_after_the_drain_bound() {
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    d.on(Event::Paused(100));
    d.spawned(Role::Successor, 101);
    d.on(Event::Ready(101));
    assert!(
        !d.after(DRAIN - Duration::from_millis(1))
            .iter()
            .any(|a| matches!(a, Action::Signal { sig: Sig::Kill, .. }))
    );
    let a = d.after(Duration::from_millis(1));
    assert!(
        a.contains(&Action::Signal {
            pid: 100,
            sig: Sig::Kill
        }),
        "{a:?}"
    );
    d.exited(100, Exit::Failed("signal: 9".into()));
    assert!(d.m.draining().is_empty());
    assert_eq!(d.m.children(), vec![101]);
}

#[test]
fn a_stop_after_a_successor_died_on_its_own_does_not_wait_for_it_again() {
    let mut d = Drive::serving();
    d.on(Event::Signal(OsSignal::Handover));
    d.on(Event::Paused(100));
    d.spawned(Role::Successor, 101);
    d.crash(101);
    assert_eq!(d.m.children(), vec![100]);
    d.on(Event::Signal(OsSignal::Stop));
    assert_eq!(exit_code(&d.exited(100, Exit::Graceful)), Some(exit::OK));
}

#[test]
fn an_operator_stopping_the_relay_during_a_change_stops_the_supervisor_without_blame() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    let a = d.exited(200, Exit::Graceful);
    assert!(a.contains(&Action::Systemd(Notify::Stopping)), "{a:?}");
    let a = d.exited(100, Exit::Graceful);
    assert_eq!(
        undo_of(&a),
        Some((Kind::Upgrade, Cause::Interrupted)),
        "{a:?}"
    );
    assert_eq!(exit_code(&d.on(Event::Done(Done::Undone))), Some(exit::OK));
}

#[test]
fn a_stop_during_a_change_undoes_it_once_the_generations_are_gone_without_blame() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    let a = d.on(Event::Signal(OsSignal::Stop));
    assert!(undo_of(&a).is_none(), "not while generations run");
    d.exited(100, Exit::Graceful);
    let a = d.exited(200, Exit::Graceful);
    assert_eq!(
        undo_of(&a),
        Some((Kind::Upgrade, Cause::Interrupted)),
        "{a:?}"
    );
    let a = d.on(Event::Done(Done::Undone));
    assert!(refused(&a).is_some_and(|w| w.contains("stopped during the change")));
    assert_eq!(exit_code(&a), Some(exit::OK));
}

#[test]
fn a_stop_while_a_release_is_prepared_waits_for_the_job() {
    for ok in [true, false] {
        let mut d = Drive::serving();
        d.on(Event::Request {
            id: 1,
            request: Request::Upgrade("0.8.0".into()),
        });
        d.on(Event::Signal(OsSignal::Stop));
        let a = d.exited(100, Exit::Graceful);
        assert_eq!(exit_code(&a), None, "the job still runs");
        let a = if ok {
            let a = d.on(Event::Done(Done::Prepared(Ok(versions()))));
            assert_eq!(undo_of(&a), Some((Kind::Upgrade, Cause::Interrupted)));
            d.on(Event::Done(Done::Undone))
        } else {
            d.on(Event::Done(Done::Prepared(Err("bad".into()))))
        };
        assert_eq!(exit_code(&a), Some(exit::OK), "{a:?}");
    }
}

#[test]
fn a_stop_while_committing_lets_the_commit_finish() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    d.after(HEALTH);
    d.on(Event::Signal(OsSignal::Stop));
    d.exited(100, Exit::Graceful);
    assert_eq!(exit_code(&d.exited(200, Exit::Graceful)), None);
    let a = d.on(Event::Done(Done::Committed(Ok(()))));
    assert!(a.contains(&journal(Step::Committed)));
    assert_eq!(exit_code(&a), Some(exit::OK));
}

// === rollbacks ===

#[test]
fn a_rollback_commits_as_soon_as_the_previous_version_serves() {
    let mut d = Drive::serving();
    let a = d.on(Event::Request {
        id: 4,
        request: Request::Rollback(None),
    });
    assert_eq!(
        a,
        vec![Action::Job(Job::Prepare {
            kind: Kind::Rollback,
            asked: None,
            recall: None
        })]
    );
    assert_eq!(d.m.shown(), Shown::RollingBack);
    let back = Versions {
        to: "0.6.0".into(),
        from: "0.7.0".into(),
    };
    d.on(Event::Done(Done::Prepared(Ok(back.clone()))));
    let a = d.on(Event::Paused(100));
    assert!(a.contains(&Action::Spawn {
        role: Role::Successor,
        binary: Binary::Prev
    }));
    d.spawned(Role::Successor, 300);
    let a = d.on(Event::Ready(300));
    let steps: Vec<Step> = a
        .iter()
        .filter_map(|a| match a {
            Action::Journal { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![Step::RollbackSwapped, Step::RollbackCommitting]);
    assert!(a.contains(&Action::Job(Job::Commit {
        kind: Kind::Rollback,
        versions: back.clone()
    })));
    let a = d.on(Event::Done(Done::Committed(Ok(()))));
    assert_eq!(replies(&a), vec![&Answer::Ok(back)]);
}

/// A recall reaches the prepare, which verifies it; one that does not verify changes nothing.
#[test]
fn a_recall_is_verified_by_the_prepare_and_a_refused_one_changes_nothing() {
    let mut d = Drive::serving();
    let recall = crate::machine::Recall("signed recall".into());
    let a = d.on(Event::Request {
        id: 4,
        request: Request::Rollback(Some(recall.clone())),
    });
    assert_eq!(
        a,
        vec![Action::Job(Job::Prepare {
            kind: Kind::Rollback,
            asked: None,
            recall: Some(recall)
        })]
    );
    assert_eq!(d.m.shown(), Shown::RollingBack);
    let a = d.on(Event::Done(Done::Prepared(Err(
        "the recall of 0.7.0 does not verify".into(),
    ))));
    assert_eq!(
        refused(&a).as_deref(),
        Some("the recall of 0.7.0 does not verify")
    );
    assert!(d.m.change().is_none());
    assert!(d.m.successor().is_none());
    assert_eq!(d.m.shown(), Shown::Serving);
}

#[test]
fn a_rollback_whose_generation_fails_is_undone_and_the_current_version_serves_on() {
    let mut d = Drive::serving();
    d.on(Event::Request {
        id: 4,
        request: Request::Rollback(None),
    });
    d.on(Event::Done(Done::Prepared(Ok(versions()))));
    d.on(Event::Paused(100));
    d.spawned(Role::Successor, 300);
    let a = d.crash(300);
    assert_eq!(undo_of(&a).map(|u| u.0), Some(Kind::Rollback));
    d.on(Event::Done(Done::Undone));
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 100 });
}

// === odd events ===

#[test]
fn events_out_of_place_change_nothing() {
    let mut d = Drive::serving();
    let before = format!("{:?}", d.m);
    for e in [
        Event::Done(Done::Undone),
        Event::Done(Done::Committed(Ok(()))),
        Event::Paused(100),
        Event::Ready(100),
        Event::Exited {
            pid: 4242,
            how: Exit::Graceful,
        },
    ] {
        d.on(e);
    }
    assert_eq!(format!("{:?}", d.m), before);
    // A job's end in the wrong phase is ignored, and the change goes on.
    d.upgrade_prepared();
    d.on(Event::Done(Done::Committed(Ok(()))));
    assert_eq!(d.m.successor_pid(), Some(200));
}

#[test]
fn failpoint_victims_name_the_old_and_the_new_generation() {
    let mut d = Drive::serving();
    assert_eq!(d.m.victim(true), Some(100));
    assert_eq!(d.m.victim(false), None);
    d.upgrade_prepared();
    assert_eq!(d.m.victim(true), Some(200));
    assert_eq!(d.m.victim(false), Some(100));
    d.on(Event::Ready(200));
    assert_eq!(d.m.victim(true), Some(200));
    assert_eq!(d.m.victim(false), Some(100));
}

// === liveness ===

#[test]
fn a_relay_that_stops_pinging_is_replaced_new_one_ready_first_then_the_hung_one_killed() {
    let mut d = Drive::serving();
    d.on(Event::Alive(100));
    assert!(d.after(LIVE).is_empty(), "within the bound");
    let a = d.after(Duration::from_millis(1));
    assert!(a.contains(&Action::CountHung), "{a:?}");
    assert!(a.contains(&Action::Spawn {
        role: Role::Successor,
        binary: Binary::Current
    }));
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::Signal { pid: 100, .. })),
        "the hung one is not touched before its successor serves"
    );
    d.spawned(Role::Successor, 101);
    let a = d.on(Event::Ready(101));
    assert!(
        a.contains(&Action::Signal {
            pid: 100,
            sig: Sig::Hup
        }),
        "{a:?}"
    );
    let a = d.after(crate::machine::HUNG_GRACE);
    assert!(
        a.contains(&Action::Signal {
            pid: 100,
            sig: Sig::Kill
        }),
        "{a:?}"
    );
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 101 });
    assert!(d.m.draining().is_empty());
    assert_eq!(d.m.children(), vec![101, 100], "the killed one is awaited");
    d.exited(100, Exit::Failed("signal: 9".into()));
    assert_eq!(d.m.children(), vec![101]);
    // The new one is watched once it pings.
    d.on(Event::Alive(101));
    assert!(
        d.after(LIVE + Duration::from_millis(1))
            .contains(&Action::CountHung)
    );
}

#[test]
fn a_relay_that_never_pinged_is_not_watched() {
    let mut d = Drive::serving();
    assert!(d.after(LIVE * 10).is_empty());
    // Pings from anyone else change nothing.
    d.on(Event::Alive(4242));
    assert!(d.after(LIVE * 10).is_empty());
}

#[test]
fn when_the_replacement_fails_the_hung_one_stays_and_is_tried_again() {
    let mut d = Drive::serving();
    d.on(Event::Alive(100));
    d.after(LIVE + Duration::from_millis(1));
    d.spawned(Role::Successor, 101);
    d.crash(101);
    assert_eq!(d.m.serving(), &Serving::Ready { pid: 100 });
    assert!(d.after(LIVE).is_empty());
    assert!(
        d.after(Duration::from_millis(1))
            .contains(&Action::CountHung)
    );
}

#[test]
fn liveness_is_not_judged_during_a_change() {
    let mut d = Drive::serving();
    d.on(Event::Alive(100));
    d.on(Event::Request {
        id: 1,
        request: Request::Upgrade("0.8.0".into()),
    });
    assert!(!d.after(LIVE * 2).contains(&Action::CountHung));
}

#[test]
fn a_minute_of_serving_ends_the_crash_streak() {
    let mut d = Drive::serving();
    d.crash(100);
    d.after(crate::budget::BACKOFF_BASE);
    d.spawned(Role::Serving, 101);
    d.on(Event::Ready(101));
    assert_eq!(d.m.crash_streak(), 1);
    d.after(crate::budget::WINDOW - Duration::from_millis(1));
    assert_eq!(d.m.crash_streak(), 1);
    d.after(Duration::from_millis(1));
    assert_eq!(d.m.crash_streak(), 0);
}

#[test]
fn a_relay_that_keeps_hanging_is_replaced_ever_less_often() {
    let mut d = Drive::serving();
    let mut pid = 100;
    for n in 1..=crate::budget::MAX_CRASHES + 1 {
        d.on(Event::Alive(pid));
        let a = d.after(LIVE + Duration::from_millis(1));
        assert!(a.contains(&Action::CountHung), "{n}: {a:?}");
        let held = a.iter().any(|x| {
            matches!(x, Action::Log { warn: true, message } if message.contains("the next replacement waits"))
        });
        assert_eq!(held, n > crate::budget::MAX_CRASHES, "{n}: {a:?}");
        d.spawned(Role::Successor, pid + 1);
        d.on(Event::Ready(pid + 1));
        d.exited(pid, Exit::Failed("signal: 9".into()));
        pid += 1;
    }
    // The next one hangs at once: not replaced before the hold ends.
    d.on(Event::Alive(pid));
    assert!(!d.after(LIVE * 2).contains(&Action::CountHung));
    assert!(
        d.after(crate::budget::BACKOFF_LONG)
            .contains(&Action::CountHung)
    );
}

// === the health window: criteria besides "did not exit" ===

/// The new version failed a criterion: killed at once, the change undone once it is gone (the
/// reason names the criterion), then the old binary starts again and the version is refused.
fn assert_unhealthy(d: &mut Drive, a: &[Action], criterion: &str) {
    assert!(
        a.contains(&Action::Signal {
            pid: 200,
            sig: Sig::Kill
        }),
        "{a:?}"
    );
    assert_eq!(d.m.serving(), &Serving::Waiting);
    assert!(undo_of(a).is_none(), "not before it is gone");
    let a = d.exited(200, Exit::Failed("killed".into()));
    assert_eq!(undo_of(&a), Some((Kind::Upgrade, Cause::Failed)));
    let a = d.on(Event::Done(Done::Undone));
    assert!(
        refused(&a).is_some_and(|w| w.contains(&format!("health: {criterion}"))),
        "{a:?}"
    );
    assert!(a.contains(&Action::Spawn {
        role: Role::Serving,
        binary: Binary::Current
    }));
    assert!(d.m.change().is_none());
}

#[test]
fn a_new_version_that_stops_pinging_in_its_window_is_rolled_back() {
    let mut d = Drive::serving();
    d.upgrade_prepared();
    // It pinged before it was ready (a relay pings just before READY), then hangs.
    d.on(Event::Alive(200));
    d.upgrade_watching_from_prepared();
    assert!(d.after(LIVE).is_empty(), "within the bound");
    let a = d.after(Duration::from_millis(1));
    assert_unhealthy(&mut d, &a, "liveness");
}

#[test]
fn a_new_version_whose_last_ping_is_stale_at_the_end_of_its_window_is_not_committed() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    // Pings until shortly before the window ends, then none: the window's end finds the last
    // ping older than half the bound; the liveness bound then fails it.
    d.after(HEALTH - LIVE / 2 - Duration::from_millis(10));
    d.on(Event::Alive(200));
    let a = d.after(LIVE / 2 + Duration::from_millis(20));
    assert!(!commits(&a), "{a:?}");
    let a = d.after(LIVE);
    assert_unhealthy(&mut d, &a, "liveness");
}

#[test]
fn a_new_version_that_keeps_pinging_commits_after_its_window() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    let mut committed = false;
    for _ in 0..20 {
        d.on(Event::Alive(200));
        let a = d.after(LIVE / 3);
        if commits(&a) {
            committed = true;
            break;
        }
    }
    assert!(committed);
}

#[test]
fn a_new_version_above_the_memory_bound_in_its_window_is_rolled_back() {
    let mut d = Drive::serving();
    d.upgrade_watching();
    assert!(
        d.on(Event::Memory {
            pid: 200,
            bytes: MEMORY
        })
        .is_empty()
    );
    // Another process's memory, or the old generation's, is not the new version's.
    assert!(
        d.on(Event::Memory {
            pid: 100,
            bytes: MEMORY * 4
        })
        .is_empty()
    );
    let a = d.on(Event::Memory {
        pid: 200,
        bytes: MEMORY + 1,
    });
    assert_unhealthy(&mut d, &a, "memory");
}

#[test]
fn memory_is_judged_only_inside_an_upgrades_window() {
    let mut d = Drive::serving();
    assert!(
        d.on(Event::Memory {
            pid: 100,
            bytes: MEMORY * 4
        })
        .is_empty()
    );
    assert_eq!(d.m.watched(), None);
    d.upgrade_watching();
    assert_eq!(d.m.watched(), Some(200));
}

#[test]
fn with_a_probe_a_new_version_commits_only_once_it_passed_and_one_that_fails_is_rolled_back() {
    let mut d = probing();
    d.upgrade_prepared();
    let a = d.on(Event::Ready(200));
    assert!(a.contains(&Action::Job(Job::Probe { pid: 200 })), "{a:?}");
    // The window ends before the probe does: no commit until it passed.
    let a = d.after(HEALTH);
    assert!(!commits(&a), "{a:?}");
    let a = d.on(Event::Done(Done::Probed {
        pid: 200,
        outcome: Probe::Passed("3 PONG".into()),
    }));
    assert!(commits(&a), "{a:?}");

    let mut d = probing();
    d.upgrade_prepared();
    d.on(Event::Ready(200));
    let a = d.on(Event::Done(Done::Probed {
        pid: 200,
        outcome: Probe::Failed("ping 1 of 3: no answer within 5s".into()),
    }));
    assert_unhealthy(&mut d, &a, "probe");

    // A version that cannot probe is not judged by it.
    let mut d = probing();
    d.upgrade_prepared();
    d.on(Event::Ready(200));
    d.after(HEALTH);
    let a = d.on(Event::Done(Done::Probed {
        pid: 200,
        outcome: Probe::Unavailable("it has no probe command".into()),
    }));
    assert!(commits(&a), "{a:?}");
}

#[test]
fn a_new_version_not_enrolled_everywhere_at_the_end_of_its_window_is_rolled_back_unless_the_old_was_not_either()
 {
    let mut d = Drive::serving();
    d.on(enrolled(100, 2, 2));
    d.upgrade_watching();
    d.on(enrolled(200, 1, 2));
    let a = d.after(HEALTH);
    assert_unhealthy(&mut d, &a, "enrollment");

    // One that enrolls late in its window commits.
    let mut d = Drive::serving();
    d.on(enrolled(100, 2, 2));
    d.upgrade_watching();
    d.on(enrolled(200, 0, 2));
    d.after(HEALTH / 2);
    d.on(enrolled(200, 2, 2));
    let a = d.after(HEALTH / 2);
    assert!(commits(&a), "{a:?}");

    // The directory is down for both: not the release's fault.
    let mut d = Drive::serving();
    d.on(enrolled(100, 0, 2));
    d.upgrade_watching();
    d.on(enrolled(200, 0, 2));
    let a = d.after(HEALTH);
    assert!(commits(&a), "{a:?}");
}

#[test]
fn a_new_version_refusing_more_of_its_streams_than_the_old_one_is_rolled_back() {
    let streams = |d: &mut Drive, pid, admitted, failed| {
        d.on(Event::Streams {
            pid,
            counts: StreamCounts {
                admitted,
                failed,
                refused: Some(failed),
            },
        })
    };
    // The old one refused 5 %; the new one 50 % of 40.
    let mut d = Drive::serving();
    streams(&mut d, 100, 950, 50);
    d.upgrade_watching();
    streams(&mut d, 200, 20, 20);
    let a = d.after(HEALTH);
    assert_unhealthy(&mut d, &a, "streams");

    // Within the margin, or too few to tell: committed.
    for (admitted, refused) in [(90, 10), (5, 10)] {
        let mut d = Drive::serving();
        streams(&mut d, 100, 950, 50);
        d.upgrade_watching();
        streams(&mut d, 200, admitted, refused);
        let a = d.after(HEALTH);
        assert!(commits(&a), "{admitted}/{refused}: {a:?}");
    }
}

#[test]
fn a_new_version_that_turns_away_every_stream_with_a_client_code_is_rolled_back() {
    let streams = |d: &mut Drive, pid, admitted, refused: Option<u64>| {
        d.on(Event::Streams {
            pid,
            counts: StreamCounts {
                admitted,
                failed: 0,
                refused,
            },
        })
    };
    // The old one admitted 900 of 1000; the new one refused all 25 it saw (none a 5xx).
    let mut d = Drive::serving();
    streams(&mut d, 100, 900, Some(100));
    d.upgrade_watching();
    streams(&mut d, 200, 0, Some(25));
    let a = d.after(HEALTH);
    assert_unhealthy(&mut d, &a, "streams");

    // Committed: it admitted one; too few to tell; the old one refused most of its own (a
    // relay mostly reached by junk); the old one saw too few; a relay that does not say.
    for (old, new) in [
        ((900, Some(100)), (1, Some(40))),
        ((900, Some(100)), (0, Some(19))),
        ((900, Some(1000)), (0, Some(40))),
        ((19, Some(0)), (0, Some(40))),
        ((900, None), (0, Some(40))),
        ((900, Some(100)), (0, None)),
    ] {
        let mut d = Drive::serving();
        streams(&mut d, 100, old.0, old.1);
        d.upgrade_watching();
        streams(&mut d, 200, new.0, new.1);
        let a = d.after(HEALTH);
        assert!(commits(&a), "old {old:?}, new {new:?}: {a:?}");
    }
}

/// A machine that probes new versions, with a relay serving (pid 100).
fn probing() -> Drive {
    let mut d = Drive::new(Vec::new());
    d.m = Machine::new(
        Timing {
            probe_count: 3,
            ..timing()
        },
        Vec::new(),
    );
    let _ = d.m.start();
    d.spawned(Role::Serving, 100);
    d.on(Event::Ready(100));
    d
}

#[test]
fn a_probe_that_never_reports_fails_the_version_after_a_grace() {
    let mut d = probing();
    d.upgrade_prepared();
    d.on(Event::Ready(200));
    let a = d.after(HEALTH + crate::machine::PROBE_GRACE - Duration::from_millis(1));
    assert!(!commits(&a), "{a:?}");
    assert_eq!(d.m.watched(), Some(200));
    let a = d.after(Duration::from_millis(2));
    assert_unhealthy(&mut d, &a, "probe");
}
