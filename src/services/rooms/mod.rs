//! Rooms: event building, auth, state, timeline, membership.
//!
//! This first part holds the state store; event building and the write path follow.
//! Owns the tables `statekey_shortstatekey`, `shortstatekey_statekey`,
//! `eventid_shorteventid`, `shorteventid_eventid` and `shortstatehash_statediff`.

pub mod state_store;
