// Recovering RocksDB from running out of file descriptors, for ourwhats (see
// src/storage/health.rs). RocksDB's C API lacks both pieces:
//
// 1. RocksDB classes an I/O error during a flush, a compaction or a MANIFEST write as
//    "fatal" (with paranoid checks on), and a fatal error can never be resumed: reads keep
//    working while every write fails until the process restarts. An error that only says
//    the process had no descriptor left is not fatal to the data; the listener below
//    classes it as a "hard" error instead, which stops writes until DB::Resume() succeeds.
// 2. DB::Resume() itself.

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "rocksdb/db.h"
#include "rocksdb/listener.h"
#include "rocksdb/options.h"

// The C API's handles, as RocksDB's c.cc defines them.
struct rocksdb_t {
  rocksdb::DB* rep;
};
struct rocksdb_options_t {
  rocksdb::Options rep;
};

namespace {

// strerror(EMFILE) and strerror(ENFILE) both start so.
bool OutOfDescriptors(const rocksdb::Status& status) {
  return status.IsIOError() &&
         status.ToString().find("Too many open files") != std::string::npos;
}

class OutOfDescriptorsIsResumable : public rocksdb::EventListener {
 public:
  const char* Name() const override { return "OutOfDescriptorsIsResumable"; }

  void OnBackgroundError(rocksdb::BackgroundErrorReason /*reason*/,
                         rocksdb::Status* bg_error) override {
    if (bg_error != nullptr && OutOfDescriptors(*bg_error) &&
        bg_error->severity() > rocksdb::Status::Severity::kHardError) {
      *bg_error =
          rocksdb::Status(*bg_error, rocksdb::Status::Severity::kHardError);
    }
  }
};

}  // namespace

// Adds the listener to options a database is opened with.
extern "C" void ourwhats_rocksdb_options_add_recovery_listener(
    rocksdb_options_t* options) {
  options->rep.listeners.push_back(
      std::make_shared<OutOfDescriptorsIsResumable>());
}

// Clears a background error and resumes writes (flushing what it must). Answers NULL on
// success, else the error text, to be freed with free().
extern "C" char* ourwhats_rocksdb_resume(rocksdb_t* db) {
  rocksdb::Status status = db->rep->Resume();
  if (status.ok()) {
    return nullptr;
  }
  return strdup(status.ToString().c_str());
}
