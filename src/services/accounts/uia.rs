//! User-interactive authentication sessions.
//!
//! Spec: client-server API, "User-Interactive Authentication API". A request without
//! `auth` gets 401 with the flows and a new `session`; each completed stage is remembered in
//! the session; once every stage of one flow is complete the request goes through and the
//! session ends. A session is bound to the request that opened it: its operation, its user
//! and what it acts on (the devices a delete names), so it cannot be replayed for another
//! operation or another target (403 `M_FORBIDDEN`, as Synapse answers a changed request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::secrets::new_session_id;
use crate::services::error::{ErrorCode, ErrorKind, ServiceError};

/// How long an unfinished session is kept.
const SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Open sessions at most; past that new ones are refused with 429 until old ones expire.
const MAX_SESSIONS: usize = 10_000;

/// Proof that user-interactive auth passed for an operation; hand it back to
/// `Accounts::finish_uia` once the operation succeeded.
#[derive(Debug)]
pub struct UiaPassed {
    /// The session that passed.
    pub session: String,
}

/// Stage types we can verify.
pub mod stages {
    /// Always completes.
    pub const DUMMY: &str = "m.login.dummy";
    /// The account's password.
    pub const PASSWORD: &str = "m.login.password";
    /// The configured registration token.
    pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";
}

/// A session subject that binds it to a request's body: the SHA-256 of the parts given
/// (each as canonical JSON, lenient about numbers), in base64. A session whose stages
/// passed for one body (and whose operation then failed, say on a weak new password)
/// cannot complete a request with another body (spec: the client completes the stages
/// "by resubmitting the same request").
pub fn body_subject(parts: &[&Value]) -> String {
    let mut bytes = Vec::new();
    for part in parts {
        match crate::core::canonical_json::to_bytes(
            part,
            crate::core::canonical_json::Numbers::Lenient,
        ) {
            Ok(canonical) => bytes.extend_from_slice(&canonical),
            // (Not JSON a body could hold: its text stands for it.)
            Err(_) => bytes.extend_from_slice(part.to_string().as_bytes()),
        }
        bytes.push(b'\n');
    }
    crate::core::base64::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
}

/// What an operation asks of user-interactive auth.
pub struct UiaRequest<'a> {
    /// Names the operation, e.g. `"register"`, `"delete_devices"`.
    pub operation: &'a str,
    /// The authenticated user the operation is for, if any.
    pub user: Option<&'a str>,
    /// What the operation acts on, when more than the user (the device ids a delete
    /// names, or [`body_subject`] of the request's body); empty otherwise. A session
    /// opened for one subject cannot complete another.
    pub subject: String,
    /// The acceptable flows, each a list of stage types.
    pub flows: Vec<Vec<&'static str>>,
}

struct Session {
    operation: String,
    user: Option<String>,
    subject: String,
    completed: Vec<String>,
    created: Instant,
}

/// The open sessions (in memory: a restart asks clients to start over).
#[derive(Default)]
pub struct UiaSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

impl UiaSessions {
    /// The session named in `auth`, or a new one; refuses a session of another operation.
    pub fn open(
        &self,
        auth: Option<&Value>,
        request: &UiaRequest<'_>,
    ) -> Result<String, ServiceError> {
        let mut sessions = self.sessions.lock().expect("uia lock poisoned");
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.created) < SESSION_LIFETIME);
        let named = auth.and_then(|a| a.get("session")).and_then(Value::as_str);
        match named {
            Some(id) => {
                let session = sessions.get(id).ok_or_else(|| {
                    ServiceError::new(
                        ErrorKind::Invalid,
                        ErrorCode::InvalidParam,
                        "Unknown or expired auth session",
                    )
                })?;
                if session.operation != request.operation
                    || session.user.as_deref() != request.user
                    || session.subject != request.subject
                {
                    return Err(ServiceError::forbidden(
                        "Requested operation has changed during the UI authentication session",
                    ));
                }
                Ok(id.to_owned())
            }
            None => {
                if sessions.len() >= MAX_SESSIONS {
                    return Err(ServiceError::limit_exceeded(60_000)
                        .with_message("Too many authentication sessions in progress"));
                }
                let id = new_session_id();
                sessions.insert(
                    id.clone(),
                    Session {
                        operation: request.operation.to_owned(),
                        user: request.user.map(str::to_owned),
                        subject: request.subject.clone(),
                        completed: Vec::new(),
                        created: now,
                    },
                );
                Ok(id)
            }
        }
    }

    /// Records a completed stage.
    pub fn complete_stage(&self, session: &str, stage: &str) {
        let mut sessions = self.sessions.lock().expect("uia lock poisoned");
        if let Some(s) = sessions.get_mut(session) {
            if !s.completed.iter().any(|c| c == stage) {
                s.completed.push(stage.to_owned());
            }
        }
    }

    /// Whether the session has completed every stage of some flow. The session stays
    /// until [`UiaSessions::finish`], so a failed operation can be retried with it.
    pub fn is_complete(&self, session: &str, request: &UiaRequest<'_>) -> bool {
        let sessions = self.sessions.lock().expect("uia lock poisoned");
        sessions.get(session).is_some_and(|s| {
            request.flows.iter().any(|flow| {
                flow.iter()
                    .all(|stage| s.completed.iter().any(|c| c == stage))
            })
        })
    }

    /// Ends a session.
    pub fn finish(&self, session: &str) {
        self.sessions
            .lock()
            .expect("uia lock poisoned")
            .remove(session);
    }

    /// The 401 answer: flows, params, session, completed stages, and the failure if any.
    pub fn challenge(
        &self,
        session: &str,
        request: &UiaRequest<'_>,
        failure: Option<ServiceError>,
    ) -> ServiceError {
        let completed: Vec<String> = self
            .sessions
            .lock()
            .expect("uia lock poisoned")
            .get(session)
            .map(|s| s.completed.clone())
            .unwrap_or_default();
        let flows: Vec<Value> = request
            .flows
            .iter()
            .map(|stages| json!({ "stages": stages }))
            .collect();
        let mut error = ServiceError {
            kind: ErrorKind::Unauthenticated,
            errcode: None,
            message: String::new(),
            extra: Default::default(),
        };
        if let Some(failure) = failure {
            error.errcode = failure.errcode;
            error.message = failure.message;
        }
        error
            .with("flows", flows)
            .with("params", json!({}))
            .with("session", session)
            .with("completed", completed)
    }
}
