//! `/_matrix/media/*` and `/_matrix/client/v1/media/*`: not served yet (the media issue);
//! every such request answers 404 `M_UNRECOGNIZED` through the router's fallback.
