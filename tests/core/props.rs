//! Property tests: any sequence of commands, replayed from the log, gives exactly the state
//! built live; replay is deterministic; a revoked token never verifies.

use super::commands::{issue, register};
use super::Core;
use chrono::Utc;
use proptest::prelude::*;
use snaptrack_auth::command::Command;
use snaptrack_auth::domain::{
    ApiToken, Subscription, SubscriptionStatus, Tier, TokenHash, TokenId, UserId,
};
use snaptrack_auth::history::snapshot;
use snaptrack_auth::state::{Ask, Denied, State, TierTable};

#[derive(Debug, Clone)]
enum Op {
    Register(u8, u8),
    Issue(u8),
    Revoke(u8, Option<u8>),
    Regenerate(u8),
    /// Issue a token with scopes and an allowlist.
    IssueRestricted(u8),
    /// Regenerate with a grace period of this many seconds.
    Rotate(u8, u32),
    ChangePlan(u8, u8, bool),
    Use(u8, u8),
    Flush,
    /// A flush an hour later: every window has closed and is recorded.
    Close,
    Login(u8),
    Logout(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..4).prop_map(|(e, t)| Op::Register(e, t)),
        (0u8..6).prop_map(Op::Issue),
        (0u8..12, proptest::option::of(0u8..6)).prop_map(|(t, o)| Op::Revoke(t, o)),
        (0u8..12).prop_map(Op::Regenerate),
        (0u8..6).prop_map(Op::IssueRestricted),
        (0u8..12, prop_oneof![Just(1u32), Just(3600u32)]).prop_map(|(t, g)| Op::Rotate(t, g)),
        (0u8..6, 0u8..4, any::<bool>()).prop_map(|(u, t, a)| Op::ChangePlan(u, t, a)),
        (0u8..12, 1u8..5).prop_map(|(t, n)| Op::Use(t, n)),
        Just(Op::Flush),
        Just(Op::Close),
        (0u8..6).prop_map(Op::Login),
        (0u8..8).prop_map(Op::Logout),
    ]
}

const TIERS: TierTable = TierTable([
    Some((3, 3600)),
    Some((5, 3600)),
    Some((8, 3600)),
    Some((13, 3600)),
]);

struct Run {
    core: Core,
    tokens: Vec<(TokenId, ApiToken)>,
    revoked: Vec<ApiToken>,
    sessions: Vec<TokenHash>,
    /// Hours the simulated clock of requests and flushes is ahead of the real one (each
    /// `Close` moves it on an hour: the clock never runs back into a recorded period).
    hours: i64,
}

impl Run {
    fn exec(&self, cmd: Command) -> bool {
        self.core.writer.execute_now(cmd, Utc::now()).is_ok()
    }

    fn step(&mut self, op: Op) {
        let now = Utc::now() + chrono::Duration::hours(self.hours);
        match op {
            Op::Register(e, t) => {
                self.exec(register(
                    &format!("user{e}@example.com"),
                    Tier::ALL[t as usize],
                ));
            }
            Op::Issue(u) => {
                let t = ApiToken::generate();
                let (id, cmd) = issue(u64::from(u) + 1, &t);
                if self.exec(cmd) {
                    self.tokens.push((id, t));
                }
            }
            Op::Revoke(i, owner) => {
                if let Some((id, t)) = self.tokens.get(i as usize).cloned() {
                    let owner = owner.map(|o| UserId(u64::from(o) + 1));
                    if self.exec(Command::RevokeToken {
                        token_id: id,
                        owner,
                    }) {
                        self.revoked.push(t);
                    }
                }
            }
            Op::Regenerate(i) => {
                if let Some((id, t)) = self.tokens.get(i as usize).cloned() {
                    let (new_id, new, cmd) = regenerate(id, None);
                    if self.exec(cmd) {
                        self.revoked.push(t);
                        self.tokens.push((new_id, new));
                    }
                }
            }
            Op::IssueRestricted(u) => {
                let t = ApiToken::generate();
                let (id, mut cmd) = issue(u64::from(u) + 1, &t);
                if let Command::IssueToken {
                    scopes,
                    allowed_ips,
                    ..
                } = &mut cmd
                {
                    *scopes = Some(vec!["websites:read".into(), "reports:read".into()]);
                    *allowed_ips = Some(vec!["10.0.0.0/8".parse().unwrap()]);
                }
                if self.exec(cmd) {
                    self.tokens.push((id, t));
                }
            }
            Op::Rotate(i, grace) => {
                if let Some((id, _)) = self.tokens.get(i as usize).cloned() {
                    let grace = Some(chrono::Duration::seconds(i64::from(grace)));
                    let (new_id, new, cmd) = regenerate(id, grace);
                    if self.exec(cmd) {
                        self.tokens.push((new_id, new));
                    }
                }
            }
            Op::ChangePlan(u, t, active) => {
                let status = if active {
                    SubscriptionStatus::Active
                } else {
                    SubscriptionStatus::Inactive
                };
                self.exec(Command::ChangeSubscription {
                    user_id: UserId(u64::from(u) + 1),
                    subscription: Subscription {
                        tier: Tier::ALL[t as usize],
                        status,
                        expires_at: None,
                    },
                });
            }
            Op::Use(i, n) => {
                if let Some((_, t)) = self.tokens.get(i as usize) {
                    for _ in 0..n {
                        let _ = self.core.state.verify(
                            t.expose(),
                            now.timestamp(),
                            &TIERS,
                            Ask::default(),
                        );
                    }
                }
            }
            Op::Flush => {
                let usage = self.core.state.rate_limits.drain(now.timestamp());
                self.exec(Command::RecordUsage(usage));
            }
            Op::Close => {
                self.hours += 1;
                let later = now + chrono::Duration::hours(1);
                let usage = self.core.state.rate_limits.drain(later.timestamp());
                self.exec(Command::RecordUsage(usage));
            }
            Op::Login(u) => {
                let session = TokenHash::of(ApiToken::generate().expose());
                let cmd = Command::RecordLogin {
                    user_id: UserId(u64::from(u) + 1),
                    session,
                    expires_at: now + chrono::Duration::hours(1),
                    client_ip: None,
                };
                if self.exec(cmd) {
                    self.sessions.push(session);
                }
            }
            Op::Logout(i) => {
                if let Some(s) = self.sessions.get(i as usize) {
                    self.exec(Command::EndSession { session: *s });
                }
            }
        }
    }
}

/// A regenerate of `old` by an operator: the new token's id, the token, and the command.
fn regenerate(old: TokenId, grace: Option<chrono::Duration>) -> (TokenId, ApiToken, Command) {
    let new = ApiToken::generate();
    let new_id = TokenId::new();
    let cmd = Command::RegenerateToken {
        old,
        owner: None,
        token_id: new_id,
        hash: new.hash(),
        hint: new.hint(),
        grace,
    };
    (new_id, new, cmd)
}

fn never_verifies(state: &State, t: &ApiToken) -> bool {
    matches!(
        state.verify(t.expose(), Utc::now().timestamp(), &TIERS, Ask::default()),
        Err(Denied::Unauthorized(_))
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replay_equals_live_is_deterministic_and_revoked_tokens_never_verify(ops in proptest::collection::vec(op(), 1..60)) {
        let mut run = Run { core: Core::new(), tokens: vec![], revoked: vec![], sessions: vec![], hours: 0 };
        for op in ops {
            run.step(op);
        }
        // What a stop leaves: the closed windows recorded, the open ones checkpointed.
        run.step(Op::Flush);
        let live = run.core.state.snapshot();
        let replayed = run.core.replayed();
        prop_assert_eq!(&live, &replayed.snapshot());
        prop_assert_eq!(replayed.snapshot(), run.core.replayed().snapshot());
        replayed.rate_limits.restore_checkpoint(run.core.state.rate_limits.checkpoint());
        for user in 1..=6 {
            let user = UserId(user);
            prop_assert_eq!(run.core.state.rate_limits.used(user), replayed.rate_limits.used(user));
            prop_assert_eq!(run.core.state.tokens_of(user), replayed.tokens_of(user));
        }
        for t in &run.revoked {
            prop_assert!(never_verifies(&run.core.state, t));
            prop_assert!(never_verifies(&replayed, t));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A start from a snapshot at any point, plus the events after it, gives exactly the state
    /// a replay of the whole log gives.
    #[test]
    fn a_snapshot_and_its_tail_equal_a_full_replay(
        ops in proptest::collection::vec(op(), 1..60),
        at in 0.0f64..=1.0,
    ) {
        let mut run = Run { core: Core::new(), tokens: vec![], revoked: vec![], sessions: vec![], hours: 0 };
        for op in ops {
            run.step(op);
        }
        run.step(Op::Flush);
        let full = run.core.replayed();
        let last = run.core.log.last_seq();
        let point = (last as f64 * at) as u64;
        let partial = State::new("n1");
        for env in run.core.log.iter_from(1).take_while(|e| e.as_ref().map_or(true, |e| e.seq <= point)) {
            partial.apply_owned(env.unwrap()).unwrap();
        }
        prop_assert_eq!(partial.applied_seq(), point);
        let bytes = snapshot::encode(&partial.image(), 1).unwrap();
        let (image, _) = snapshot::decode(&bytes).unwrap();
        let restored = State::from_image("n1", false, image);
        run.core.log.replay_into(&restored).unwrap();
        prop_assert_eq!(restored.image(), full.image());
        prop_assert_eq!(restored.snapshot(), full.snapshot());
        for t in &run.revoked {
            prop_assert!(never_verifies(&restored, t));
        }
        for (_, t) in &run.tokens {
            prop_assert_eq!(
                restored.verify(t.expose(), Utc::now().timestamp(), &TIERS, Ask::default()).is_ok(),
                full.verify(t.expose(), Utc::now().timestamp(), &TIERS, Ask::default()).is_ok()
            );
        }
    }
}
