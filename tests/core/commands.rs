//! The rules, given/when/then: given events already applied, when a command runs, then
//! these events (or this rejection, and no event).

use super::Core;
use chrono::Utc;
use snaptrack_auth::actors::WriteError;
use snaptrack_auth::command::{Command, CommandError};
use snaptrack_auth::domain::{
    ApiToken, Email, Subscription, SubscriptionStatus, Tier, TokenId, TokenName, UserId, UserName,
};
use snaptrack_auth::event::{Event, RevokeReason};
use snaptrack_auth::state::LiveToken;

pub fn register(email: &str, tier: Tier) -> Command {
    Command::RegisterUser {
        email: Email::parse(email).unwrap(),
        name: UserName::parse("Test User").unwrap(),
        credential_id: "c0ffee".into(),
        tier,
    }
}

pub fn issue(user: u64, token: &ApiToken) -> (TokenId, Command) {
    let id = TokenId::new();
    (
        id,
        Command::IssueToken {
            user_id: UserId(user),
            token_id: id,
            name: TokenName::parse("ci").unwrap(),
            hash: token.hash(),
            hint: token.hint(),
            expires_at: None,
            scopes: None,
            allowed_ips: None,
        },
    )
}

fn given(core: &Core, cmds: Vec<Command>) {
    for c in cmds {
        core.writer.execute_now(c, Utc::now()).unwrap();
    }
}

fn when(core: &Core, cmd: Command) -> Result<Vec<Event>, CommandError> {
    let before = core.log.last_seq();
    match core.writer.execute_now(cmd, Utc::now()) {
        Ok(envs) => Ok(envs.into_iter().map(|e| e.event).collect()),
        Err(WriteError::Rejected(e)) => {
            assert_eq!(
                core.log.last_seq(),
                before,
                "a rejected command wrote an event"
            );
            Err(e)
        }
        Err(e) => panic!("storage error {e}"),
    }
}

#[test]
fn registering_assigns_ids_from_one_and_refuses_a_taken_email_whatever_its_case() {
    let core = Core::new();
    let events = when(&core, register("a@example.com", Tier::Pro)).unwrap();
    assert!(matches!(&events[..], [Event::UserRegistered(u)] if u.user_id == UserId(1)));
    given(&core, vec![register("b@example.com", Tier::Free)]);
    assert_eq!(
        when(&core, register("A@Example.com", Tier::Pro)),
        Err(CommandError::EmailTaken)
    );
    let events = when(&core, register("c@example.com", Tier::Pro)).unwrap();
    assert!(matches!(&events[..], [Event::UserRegistered(u)] if u.user_id == UserId(3)));
}

#[test]
fn issuing_for_an_unknown_user_is_refused() {
    let core = Core::new();
    let (_, cmd) = issue(9, &ApiToken::generate());
    assert_eq!(when(&core, cmd), Err(CommandError::UserNotFound));
}

#[test]
fn revoking_checks_owner_and_state() {
    let core = Core::new();
    let t = ApiToken::generate();
    let (id, cmd) = issue(1, &t);
    given(
        &core,
        vec![
            register("a@example.com", Tier::Pro),
            register("b@example.com", Tier::Pro),
            cmd,
        ],
    );
    let other = Command::RevokeToken {
        token_id: id,
        owner: Some(UserId(2)),
    };
    assert_eq!(when(&core, other), Err(CommandError::TokenNotFound));
    let unknown = Command::RevokeToken {
        token_id: TokenId::new(),
        owner: None,
    };
    assert_eq!(when(&core, unknown), Err(CommandError::TokenNotFound));
    let mine = Command::RevokeToken {
        token_id: id,
        owner: Some(UserId(1)),
    };
    let events = when(&core, mine.clone()).unwrap();
    assert!(
        matches!(&events[..], [Event::TokenRevoked(r)] if r.token_id == id && r.reason == RevokeReason::Revoked)
    );
    assert_eq!(when(&core, mine), Err(CommandError::AlreadyRevoked));
    let entry = core.state.tokens.pin().get(&t.hash()).cloned();
    assert_eq!(entry.map(|l| l.expires_at), Some(LiveToken::REVOKED));
}

#[test]
fn regenerating_revokes_and_issues_in_one_append() {
    let core = Core::new();
    let old = ApiToken::generate();
    let (id, cmd) = issue(1, &old);
    given(&core, vec![register("a@example.com", Tier::Pro), cmd]);
    let new = ApiToken::generate();
    let new_id = TokenId::new();
    let before = core.log.last_seq();
    let events = when(
        &core,
        Command::RegenerateToken {
            old: id,
            owner: Some(UserId(1)),
            token_id: new_id,
            hash: new.hash(),
            hint: new.hint(),
            grace: None,
        },
    )
    .unwrap();
    assert!(
        matches!(&events[..], [Event::TokenRevoked(r), Event::TokenIssued(i)]
        if r.reason == RevokeReason::Regenerated && i.token_id == new_id && i.name == "ci")
    );
    assert_eq!(core.log.last_seq(), before + 2);
    let expiry = |t: &ApiToken| core.state.tokens.pin().get(&t.hash()).map(|l| l.expires_at);
    assert_eq!(expiry(&old), Some(LiveToken::REVOKED));
    assert_eq!(expiry(&new), Some(i64::MAX));
}

#[test]
fn regenerating_with_a_grace_period_ends_the_old_token_by_time_keeping_its_restrictions() {
    let core = Core::new();
    let old = ApiToken::generate();
    let (id, mut cmd) = issue(1, &old);
    if let Command::IssueToken {
        scopes,
        allowed_ips,
        ..
    } = &mut cmd
    {
        *scopes = Some(vec!["reports:read".into()]);
        *allowed_ips = Some(vec!["10.0.0.0/8".parse().unwrap()]);
    }
    given(&core, vec![register("a@example.com", Tier::Pro), cmd]);
    let new = ApiToken::generate();
    let new_id = TokenId::new();
    let regenerate = |grace: i64| Command::RegenerateToken {
        old: id,
        owner: Some(UserId(1)),
        token_id: new_id,
        hash: new.hash(),
        hint: new.hint(),
        grace: Some(chrono::Duration::seconds(grace)),
    };
    let now = Utc::now();
    let events = when(&core, regenerate(600)).unwrap();
    let [Event::TokenRotated(r), Event::TokenIssued(i)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!((r.token_id, r.replaced_by), (id, new_id));
    let stops = r.expires_at.timestamp();
    assert!((now.timestamp() + 599..=now.timestamp() + 601).contains(&stops));
    assert_eq!(i.scopes, Some(vec!["reports:read".to_string()]));
    assert_eq!(i.allowed_ips, Some(vec!["10.0.0.0/8".to_string()]));
    // The old token works until it stops, then not; the new one on.
    let tiers =
        snaptrack_auth::state::TierTable([None, Some((9, 60)), Some((9, 60)), Some((9, 60))]);
    let from = snaptrack_auth::state::Ask {
        scope: None,
        ip: Some("10.1.2.3".parse().unwrap()),
    };
    let ok = |t: &ApiToken, at: i64| core.state.verify(t.expose(), at, &tiers, from).is_ok();
    assert!(ok(&old, stops - 1));
    assert!(!ok(&old, stops));
    assert!(ok(&new, stops + 10));
    let rec = core.state.token(id).unwrap();
    assert_eq!(rec.replaced_by, Some(new_id));
    assert_eq!(rec.expires_at.map(|e| e.timestamp()), Some(stops));
    // Once replaced, not again (revoking it is how to end the grace early).
    assert_eq!(
        when(&core, regenerate(60)),
        Err(CommandError::AlreadyRotated)
    );
}

#[test]
fn changing_the_plan_of_an_unknown_user_is_refused() {
    let core = Core::new();
    let cmd = Command::ChangeSubscription {
        user_id: UserId(5),
        subscription: Subscription {
            tier: Tier::Pro,
            status: SubscriptionStatus::Active,
            expires_at: None,
        },
    };
    assert_eq!(when(&core, cmd), Err(CommandError::UserNotFound));
}

#[test]
fn no_event_ever_carries_the_token() {
    let core = Core::new();
    let t = ApiToken::generate();
    let (_, cmd) = issue(1, &t);
    given(&core, vec![register("a@example.com", Tier::Pro), cmd]);
    core.log.flush_blocking().unwrap();
    let mut n = 0;
    for env in core.log.iter_from(1) {
        n += 1;
        let json = String::from_utf8(env.unwrap().to_json()).unwrap();
        assert!(!json.contains(t.expose()));
        assert!(!json.contains(&t.expose()[5..45]));
    }
    assert_eq!(n, 2);
}

#[test]
fn a_user_holds_at_most_the_maximum_of_active_tokens() {
    use snaptrack_auth::command::MAX_ACTIVE_TOKENS;
    let core = Core::new();
    given(&core, vec![register("a@example.com", Tier::Pro)]);
    let mut first = None;
    for _ in 0..MAX_ACTIVE_TOKENS {
        let (id, cmd) = issue(1, &ApiToken::generate());
        first.get_or_insert(id);
        given(&core, vec![cmd]);
    }
    let (_, cmd) = issue(1, &ApiToken::generate());
    assert_eq!(when(&core, cmd), Err(CommandError::TokenLimitReached));
    given(
        &core,
        vec![Command::RevokeToken {
            token_id: first.unwrap(),
            owner: None,
        }],
    );
    let (_, cmd) = issue(1, &ApiToken::generate());
    assert!(when(&core, cmd).is_ok(), "a revoked token frees its place");
}

#[test]
fn regenerating_an_expired_token_counts_against_the_cap() {
    use snaptrack_auth::command::MAX_ACTIVE_TOKENS;
    let core = Core::new();
    given(&core, vec![register("a@example.com", Tier::Pro)]);
    let t0 = Utc::now();
    // One token that expires a minute later.
    let expiring = TokenId::new();
    let t = ApiToken::generate();
    core.writer
        .execute_now(
            Command::IssueToken {
                user_id: UserId(1),
                token_id: expiring,
                name: TokenName::parse("old").unwrap(),
                hash: t.hash(),
                hint: t.hint(),
                expires_at: Some(t0 + chrono::Duration::minutes(1)),
                scopes: None,
                allowed_ips: None,
            },
            t0,
        )
        .unwrap();
    // A full set of active ones once it has expired.
    let t1 = t0 + chrono::Duration::minutes(2);
    for _ in 0..MAX_ACTIVE_TOKENS {
        core.writer
            .execute_now(issue(1, &ApiToken::generate()).1, t1)
            .unwrap();
    }
    let regenerate = |at| {
        let t = ApiToken::generate();
        core.writer.execute_now(
            Command::RegenerateToken {
                old: expiring,
                owner: Some(UserId(1)),
                token_id: TokenId::new(),
                hash: t.hash(),
                hint: t.hint(),
                grace: None,
            },
            at,
        )
    };
    // While it is active, regenerating swaps one for one; once it has expired, the
    // replacement would be the 101st.
    let later = t0 + chrono::Duration::hours(1);
    let before = core.log.last_seq();
    assert!(matches!(
        regenerate(later),
        Err(WriteError::Rejected(CommandError::TokenLimitReached))
    ));
    assert_eq!(core.log.last_seq(), before, "nothing written");
    assert_eq!(
        core.state.active_token_count(UserId(1), later),
        MAX_ACTIVE_TOKENS
    );
    assert!(regenerate(t0).is_ok(), "while active: one for one");
}

#[test]
fn a_login_drops_the_sessions_that_expired_before_it() {
    use snaptrack_auth::domain::TokenHash;
    let core = Core::new();
    given(&core, vec![register("a@example.com", Tier::Pro)]);
    let t0 = Utc::now();
    let login = |session: &TokenHash, expires_at, at| {
        core.writer
            .execute_now(
                Command::RecordLogin {
                    user_id: UserId(1),
                    session: *session,
                    expires_at,
                    client_ip: None,
                },
                at,
            )
            .unwrap();
    };
    let (short, long, later) = (
        TokenHash::of("short"),
        TokenHash::of("long"),
        TokenHash::of("later"),
    );
    login(&short, t0 + chrono::Duration::minutes(1), t0);
    login(&long, t0 + chrono::Duration::days(1), t0);
    assert_eq!(core.state.sessions.len(), 2);
    // An hour later, by the event's time: the short session is gone, the long one stays.
    let hour = t0 + chrono::Duration::hours(1);
    login(&later, hour + chrono::Duration::days(1), hour);
    let sessions = core.state.sessions.pin();
    assert!(sessions.get(&short).is_none());
    assert!(sessions.get(&long).is_some() && sessions.get(&later).is_some());
    // Replay drops the same ones.
    assert_eq!(core.replayed().snapshot(), core.state.snapshot());
    // Logging out of a session already dropped writes nothing.
    assert!(when(&core, Command::EndSession { session: short })
        .unwrap()
        .is_empty());
}

#[test]
fn old_events_with_hidden_characters_still_replay_and_compare_as_today() {
    use snaptrack_auth::event::{Envelope, UserRegistered};
    // Written before emails and names were checked for invisible characters and compared
    // after NFKC: the log replays as it is, and the address is compared in today's form.
    let core = Core::new();
    let old = Envelope::numbered(
        vec![Event::UserRegistered(UserRegistered {
            user_id: UserId(1),
            email: "ＢＯＢ\u{200b}@example.com".into(),
            name: "Bob\u{202e}".into(),
            credential_id: "c0ffee".into(),
            tier: Tier::Pro,
        })],
        0,
        "n1",
        Utc::now(),
    );
    core.log.mirror(&old[0]).unwrap();
    let state = core.replayed();
    assert_eq!(state.user(UserId(1)).unwrap().name, "Bob\u{202e}");
    assert!(state.email_taken("bob\u{200b}@example.com"));
    assert!(!state.email_taken("bob@example.com"), "a different address");
}
