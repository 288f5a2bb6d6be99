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
use snaptrack_auth::state::{Denied, State, TierTable};

#[derive(Debug, Clone)]
enum Op {
    Register(u8, u8),
    Issue(u8),
    Revoke(u8, Option<u8>),
    Regenerate(u8),
    ChangePlan(u8, u8, bool),
    Use(u8, u8),
    Flush,
    Login(u8),
    Logout(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..4).prop_map(|(e, t)| Op::Register(e, t)),
        (0u8..6).prop_map(Op::Issue),
        (0u8..12, proptest::option::of(0u8..6)).prop_map(|(t, o)| Op::Revoke(t, o)),
        (0u8..12).prop_map(Op::Regenerate),
        (0u8..6, 0u8..4, any::<bool>()).prop_map(|(u, t, a)| Op::ChangePlan(u, t, a)),
        (0u8..12, 1u8..5).prop_map(|(t, n)| Op::Use(t, n)),
        Just(Op::Flush),
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
}

impl Run {
    fn exec(&self, cmd: Command) -> bool {
        self.core.writer.execute_now(cmd, Utc::now()).is_ok()
    }

    fn step(&mut self, op: Op) {
        let now = Utc::now();
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
                    let new = ApiToken::generate();
                    let new_id = TokenId::new();
                    let cmd = Command::RegenerateToken {
                        old: id,
                        owner: None,
                        token_id: new_id,
                        hash: new.hash(),
                        hint: new.hint(),
                    };
                    if self.exec(cmd) {
                        self.revoked.push(t);
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
                        let _ = self.core.state.verify(t.expose(), now.timestamp(), &TIERS);
                    }
                }
            }
            Op::Flush => {
                let usage = self.core.state.rate_limits.drain();
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

fn never_verifies(state: &State, t: &ApiToken) -> bool {
    matches!(
        state.verify(t.expose(), Utc::now().timestamp(), &TIERS),
        Err(Denied::Unauthorized(_))
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replay_equals_live_is_deterministic_and_revoked_tokens_never_verify(ops in proptest::collection::vec(op(), 1..60)) {
        let mut run = Run { core: Core::new(), tokens: vec![], revoked: vec![], sessions: vec![] };
        for op in ops {
            run.step(op);
        }
        // Flush what is still counted locally, so usage is in the log too.
        run.step(Op::Flush);
        let live = run.core.state.snapshot();
        let replayed = run.core.replayed();
        prop_assert_eq!(&live, &replayed.snapshot());
        prop_assert_eq!(replayed.snapshot(), run.core.replayed().snapshot());
        for user in 1..=6 {
            prop_assert_eq!(run.core.state.rate_limits.used(UserId(user)), replayed.rate_limits.used(UserId(user)));
        }
        for t in &run.revoked {
            prop_assert!(never_verifies(&run.core.state, t));
            prop_assert!(never_verifies(&replayed, t));
        }
    }
}
