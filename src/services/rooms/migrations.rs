//! Moving the rooms service's records of an older schema version to the current layout,
//! at start-up, before the service serves (see `storage::SCHEMA_VERSION`).

use super::event_store::{pdu_key, read_timeline_value, timeline_value, EventStore};
use super::records::EventMeta;
use crate::services::error::ServiceResult;
use crate::storage::{keys, Batch, Entry, Table};

/// The `meta` record saying the PDUs are keyed by room (schema version 3).
const PDUS_BY_ROOM: &[u8] = b"pdus_by_room";
/// The `meta` record saying the emptied `shorteventid_pdu` was compacted (its files,
/// deletions and all, held the disk space of every PDU until then).
const OLD_PDUS_COMPACTED: &[u8] = b"old_pdus_compacted";
/// The `meta` record saying timeline entries carry their event's metadata (schema
/// version 3).
const TIMELINE_METAS: &[u8] = b"timeline_metas";
/// Entries rewritten per write batch at most.
const MOVE_BATCH: usize = 10_000;
/// Bytes of entries rewritten per write batch at most (PDUs run to 64 KiB).
const MOVE_BATCH_BYTES: usize = 16 << 20;

/// Runs every move the database still needs.
pub fn run(store: &EventStore) -> ServiceResult<()> {
    move_pdus_by_room(store)?;
    copy_metas_into_timelines(store)?;
    move_waiting_redactions(store)
}

/// Redactions waiting for their targets move from `eventid_pendingredaction` (older
/// builds) to `shortroomid_eventid_pendingredaction`, where the writers look. Few rows:
/// one batch.
fn move_waiting_redactions(store: &EventStore) -> ServiceResult<()> {
    let (moved, dropped) = super::writer::move_rows_keyed_by_event(store)?;
    if moved + dropped > 0 {
        tracing::info!(
            moved,
            dropped,
            "waiting redactions moved to their rooms' rows"
        );
    }
    Ok(())
}

/// Schema version 3: moves each PDU of `shorteventid_pdu` to its room's place in
/// `shortroomid_shorteventid_pdu` (the room comes from the event's metadata), then
/// compacts the emptied table once. A PDU without metadata or with a key that is not a
/// short id (no room to put it under, and never readable) stays where it is, counted in
/// the log.
fn move_pdus_by_room(store: &EventStore) -> ServiceResult<()> {
    let (mut moved, mut unplaced) = (0usize, 0usize);
    let done = rewrite(
        store,
        Table::ShorteventidPdu,
        PDUS_BY_ROOM,
        |batch, entry, meta| {
            let (key, pdu) = entry;
            let meta = meta.as_deref().and_then(EventMeta::decode);
            let (Some(meta), Some(short)) = (meta, keys::read_u64(&key)) else {
                unplaced += 1;
                return Ok(());
            };
            batch.put(
                Table::ShortroomidShorteventidPdu,
                pdu_key(meta.room, short),
                pdu,
            );
            batch.delete(Table::ShorteventidPdu, key);
            moved += 1;
            Ok(())
        },
    )?;
    if done && moved + unplaced > 0 {
        tracing::info!(
            moved,
            unplaced,
            "PDUs moved to their rooms' places (schema version 3)"
        );
    }
    if unplaced > 0 {
        tracing::warn!(
            unplaced,
            "PDUs without metadata or a readable key left in shorteventid_pdu: no event reads them"
        );
    }
    if store.db.get(Table::Meta, OLD_PDUS_COMPACTED)?.is_none() {
        store.db.compact(Table::ShorteventidPdu);
        let mut batch = store.db.batch();
        batch.put(Table::Meta, OLD_PDUS_COMPACTED, b"1");
        store.db.commit_blocking(batch)?;
    }
    Ok(())
}

/// Schema version 3: gives each timeline entry a copy of its event's metadata record.
fn copy_metas_into_timelines(store: &EventStore) -> ServiceResult<()> {
    let mut copied = 0usize;
    let done = rewrite(
        store,
        Table::ShortroomidPosShorteventid,
        TIMELINE_METAS,
        |batch, (key, value), meta| {
            let Some((short, None)) = read_timeline_value(&value) else {
                return Ok(()); // already carries it
            };
            let Some(bytes) = meta else {
                return Ok(()); // read from `shorteventid_meta` as before
            };
            let (Some(meta), Some(id)) = (
                EventMeta::decode(&bytes),
                EventMeta::decode_event_id(&bytes),
            ) else {
                return Ok(()); // a version-1 record without its id: read as before
            };
            batch.put(
                Table::ShortroomidPosShorteventid,
                key,
                timeline_value(short, &meta, id),
            );
            copied += 1;
            Ok(())
        },
    )?;
    if done && copied > 0 {
        tracing::info!(
            copied,
            "timeline entries given their events' metadata (schema version 3)"
        );
    }
    Ok(())
}

/// Rewrites every entry of `table`, once (the `meta` record `flag` says it was done), a
/// batch of [`MOVE_BATCH`] entries at a time: `each` gets an entry and the metadata
/// record of its event (the short id that opens the entry's key or, in a timeline, its
/// value), and puts its writes in the batch. Each batch commits atomically; a rewrite
/// cut short (a crash, a full disk) runs again at the next start, and `each` passes over
/// what is already done. Whether it ran.
fn rewrite(
    store: &EventStore,
    table: Table,
    flag: &[u8],
    mut each: impl FnMut(&mut Batch<'_>, Entry, Option<Vec<u8>>) -> ServiceResult<()>,
) -> ServiceResult<bool> {
    let db = &store.db;
    if db.get(Table::Meta, flag)?.is_some() {
        return Ok(false);
    }
    let short_of = |(key, value): &Entry| match table {
        Table::ShortroomidPosShorteventid => value.get(..8).map(<[u8]>::to_vec),
        _ => key.get(..8).map(<[u8]>::to_vec),
    };
    let mut chunk: Vec<Entry> = Vec::with_capacity(MOVE_BATCH);
    let mut entries = db.scan_range(table, &[], &[0xff; 17], false);
    let (mut done, mut bytes) = (0usize, 0usize);
    loop {
        let entry = entries.next().transpose()?;
        let end = entry.is_none();
        bytes += entry.as_ref().map_or(0, |(k, v)| k.len() + v.len());
        chunk.extend(entry);
        if chunk.len() < MOVE_BATCH && bytes < MOVE_BATCH_BYTES && !end {
            continue;
        }
        bytes = 0;
        let shorts: Vec<Vec<u8>> = chunk
            .iter()
            .map(|e| short_of(e).unwrap_or_default())
            .collect();
        let metas = db.multi_get(Table::ShorteventidMeta, &shorts)?;
        let mut batch = db.batch();
        done += chunk.len();
        for (entry, meta) in chunk.drain(..).zip(metas) {
            each(&mut batch, entry, meta)?;
        }
        if end {
            batch.put(Table::Meta, flag, b"1");
        }
        db.commit_blocking(batch)?;
        if end {
            return Ok(true);
        }
        tracing::info!(table = table.name(), done, "rewriting for schema version 3");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn meta(room: u64, pos: u64) -> EventMeta {
        EventMeta {
            room,
            pos,
            state_before: 0,
            state_after: 0,
            replaces: 0,
            redacted_by: 0,
        }
    }

    fn pdu(n: u64) -> String {
        format!(r#"{{"type":"m.room.message","sender":"@a:x","content":{{"n":{n}}}}}"#)
    }

    /// A version-2 database cut short in its move: event 0 already in its room's place,
    /// the others in the old tables (PDU by event, timeline entries without metadata),
    /// one PDU without metadata at all and one whose key is not a short id. Events are in
    /// rooms 1 to 3, in turn.
    fn version_2_store(events: u64) -> (tempfile::TempDir, EventStore, Vec<u64>) {
        let (dir, db, store) = crate::services::rooms::event_store::open_temp_store();
        let mut batch = db.batch();
        let mut shorts = Vec::new();
        for i in 0..events {
            let id = format!("$e{i}:x");
            let short = store.state.intern_new_event(&id, &mut batch);
            let (room, pos) = (1 + i % 3, 1 + i);
            let record = meta(room, pos);
            match i {
                0 => batch.put(
                    Table::ShortroomidShorteventidPdu,
                    pdu_key(room, short),
                    pdu(i),
                ),
                _ => batch.put(Table::ShorteventidPdu, short.to_be_bytes(), pdu(i)),
            }
            batch.put(
                Table::ShorteventidMeta,
                short.to_be_bytes(),
                record.encode_with_id(&id),
            );
            let place = match i {
                0 => timeline_value(short, &record, &id),
                _ => short.to_be_bytes().to_vec(),
            };
            batch.put(
                Table::ShortroomidPosShorteventid,
                keys::u64_pair(room, pos),
                place,
            );
            shorts.push(short);
        }
        batch.put(Table::ShorteventidPdu, 999_999u64.to_be_bytes(), b"{}");
        batch.put(Table::ShorteventidPdu, b"\xff\xffbad", b"{}");
        db.commit_blocking(batch).unwrap();
        (dir, store, shorts)
    }

    #[test]
    fn pdus_move_under_their_rooms_and_timelines_get_metadata_once() {
        let (_dir, store, shorts) = version_2_store(MOVE_BATCH as u64 + 5);
        let db = Arc::clone(&store.db);
        // Before the move, a timeline entry without metadata is read through the table.
        let room_2 = store.timeline(2, 0, u64::MAX, false, 2).unwrap();
        assert_eq!(room_2, [(2, shorts[1]), (5, shorts[4])]);

        run(&store).unwrap();
        for (i, event) in store.events(&shorts).unwrap().iter().enumerate() {
            assert_eq!(event.event_id, format!("$e{i}:x"));
            assert_eq!(event.pdu()["content"]["n"], i as u64);
        }
        let left: Vec<_> = db
            .scan_range(Table::ShorteventidPdu, &[], &[0xff; 9], false)
            .map(|e| e.unwrap().0)
            .collect();
        let unreadable: [Box<[u8]>; 2] = [
            Box::from(&999_999u64.to_be_bytes()[..]),
            Box::from(&b"\xff\xffbad"[..]),
        ];
        assert_eq!(left, unreadable);
        assert!(db.get(Table::Meta, OLD_PDUS_COMPACTED).unwrap().is_some());
        let in_room_1 = db
            .scan_prefix(Table::ShortroomidShorteventidPdu, &1u64.to_be_bytes())
            .count();
        assert_eq!(in_room_1, shorts.len().div_ceil(3));
        for entry in db.scan_prefix(Table::ShortroomidPosShorteventid, &[]) {
            let (_, value) = entry.unwrap();
            let (_, meta) = read_timeline_value(&value).unwrap();
            assert!(meta.is_some_and(|m| EventMeta::decode_event_id(m).is_some()));
        }
        let loaded = store.timeline_events(2, (0, u64::MAX), true, 2).unwrap();
        let got: Vec<(u64, u64, &str)> = loaded
            .iter()
            .map(|(pos, e)| (*pos, e.meta.pos, e.event_id.as_str()))
            .collect();
        let last = shorts.len() as u64 - 1 - (shorts.len() as u64 - 2) % 3;
        assert_eq!(
            got,
            [
                (last + 1, last + 1, format!("$e{last}:x").as_str()),
                (last - 2, last - 2, format!("$e{}:x", last - 3).as_str())
            ]
        );

        // Done once: a PDU put in the old table afterwards is not looked at again.
        let mut batch = db.batch();
        batch.put(Table::ShorteventidPdu, shorts[1].to_be_bytes(), b"{}");
        db.commit_blocking(batch).unwrap();
        run(&store).unwrap();
        assert_eq!(
            store.events(&shorts[1..2]).unwrap()[0].pdu()["content"]["n"],
            1
        );
    }

    #[test]
    fn waiting_redactions_move_to_the_rooms_of_the_redactions() {
        // Three redactions, in rooms 1, 2 and 3.
        let (_dir, store, shorts) = version_2_store(3);
        let waiting = |entries: &[(u64, u8)]| -> Vec<u8> {
            entries
                .iter()
                .flat_map(|(short, power)| short.to_be_bytes().into_iter().chain([*power]))
                .collect()
        };
        let new_key = |room: u64, target: &str| -> Vec<u8> {
            let mut key = room.to_be_bytes().to_vec();
            key.extend_from_slice(target.as_bytes());
            key
        };
        let mut batch = store.db.batch();
        // The first form, by the target's id only: two rooms' redactions in one row.
        batch.put(
            Table::EventidPendingredaction,
            b"$t1",
            waiting(&[(shorts[0], 1), (shorts[1], 0)]),
        );
        // The second, with the room after 0xFF; a redaction without a record goes.
        let mut second = b"$t2\xff".to_vec();
        second.extend_from_slice(&3u64.to_be_bytes());
        batch.put(
            Table::EventidPendingredaction,
            second,
            waiting(&[(shorts[2], 1), (999_999, 1)]),
        );
        // A row the room already has keeps its redactions first.
        batch.put(
            Table::ShortroomidEventidPendingredaction,
            new_key(1, "$t1"),
            waiting(&[(shorts[2], 0)]),
        );
        store.db.commit_blocking(batch).unwrap();

        let moved = crate::services::rooms::writer::move_rows_keyed_by_event(&store).unwrap();
        assert_eq!(moved, (3, 1));
        let row = |room, target| {
            store
                .db
                .get(
                    Table::ShortroomidEventidPendingredaction,
                    new_key(room, target),
                )
                .unwrap()
        };
        assert_eq!(
            row(1, "$t1"),
            Some(waiting(&[(shorts[2], 0), (shorts[0], 1)]))
        );
        assert_eq!(row(2, "$t1"), Some(waiting(&[(shorts[1], 0)])));
        assert_eq!(row(3, "$t2"), Some(waiting(&[(shorts[2], 1)])));
        assert_eq!(
            store
                .db
                .scan_prefix(Table::EventidPendingredaction, &[])
                .count(),
            0
        );
        // Nothing is left to move the next time.
        assert_eq!(
            crate::services::rooms::writer::move_rows_keyed_by_event(&store).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn a_timeline_copy_that_does_not_name_its_place_is_not_trusted() {
        let (_dir, store, shorts) = version_2_store(3);
        run(&store).unwrap();
        // Event 1 (room 2, position 2): its entry carries a record naming position 7.
        let mut batch = store.db.batch();
        batch.put(
            Table::ShortroomidPosShorteventid,
            keys::u64_pair(2, 2),
            timeline_value(shorts[1], &meta(2, 7), "$wrong:x"),
        );
        store.db.commit_blocking(batch).unwrap();
        let loaded = store.timeline_events(2, (0, u64::MAX), true, 5).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!((loaded[0].0, loaded[0].1.meta.pos), (2, 2));
        assert_eq!(loaded[0].1.event_id, "$e1:x");
    }
}
