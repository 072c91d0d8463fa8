//! A tiny chat on Palisade: every authenticated session's text is broadcast to all other
//! sessions as `user <id>: <text>`; the echo endpoint keeps its default behaviour.
//!
//! Run it with a secret of at least 32 bytes, then connect two clients to the secure endpoint,
//! send a token first (`cargo xtask token --user-id 1`), then chat:
//!
//! ```text
//! PALISADE_JWT_SECRET=$(cat .dev/jwt-secret) cargo run -p palisade-server --example chat
//! ```

#![allow(clippy::print_stdout)] // An example talks to a person.

use palisade_server::app::{Handler, Peer, echo_reply};
use palisade_server::config::Config;
use palisade_server::server::Server;
use palisade_server::sessions::{SessionInfo, SessionRegistry};
use palisade_transport::{Close, Context, Message};

struct Chat {
    sessions: SessionRegistry,
}

impl Handler for Chat {
    async fn on_message(&self, peer: &Peer, msg: Message, ctx: &mut Context) -> Result<(), Close> {
        let Some(session) = &peer.session else {
            // The echo endpoint: keep the guide's behaviour.
            return ctx.send(echo_reply(&peer.echo_prefix, msg));
        };
        let Message::Text(text) = msg else {
            return Err(Close::new(1003, "chat accepts text only"));
        };
        let line = Message::Text(format!("user {}: {text}", session.user_id).into());
        self.sessions.broadcast(&line, Some(&session.id));
        Ok(())
    }

    fn on_session_start(&self, session: &SessionInfo, sessions: &SessionRegistry) {
        let line = Message::Text(format!("* user {} joined", session.user_id).into());
        sessions.broadcast(&line, Some(&session.id));
    }

    fn on_session_end(&self, session: &SessionInfo, sessions: &SessionRegistry) {
        sessions.broadcast(&Message::Text(format!("* user {} left", session.user_id).into()), None);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::default();
    config.apply_env(std::env::vars());
    // The registry is created by the server; the chat reaches it through the handler's
    // arguments and through the server handle once it is running.
    let sessions = SessionRegistry::new(config.secure.max_sessions_per_user);
    let server =
        Server::start_with_sessions(&config, Chat { sessions: sessions.clone() }, sessions).await?;
    println!("chat: secure endpoint on ws://{:?}", server.secure_addr);
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
