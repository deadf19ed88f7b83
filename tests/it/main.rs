//! Every HTTP story of one server, in one test binary: the server, RocksDB and the client
//! are linked once rather than once per area. A module per area of the API.

mod common;

mod access_control;
mod accounts;
mod cli;
mod conformance;
mod e2ee;
mod e2ee_interop;
mod event_graph;
mod federation_endpoints;
mod http_basics;
mod jssdk_interop;
mod media;
mod openid_and_whois;
mod profile;
mod push;
mod receive_pdu;
mod receive_property;
mod restart;
mod rooms;
mod rooms_property;
mod search;
mod spec_points;
mod staying_up;
mod synapse_pdus;
mod sync;
mod sync_stories;
