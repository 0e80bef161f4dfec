// The messages of modelgate's actors: atoms and typed-actor interfaces.
//
// `registry_actor` is the one owner of the server records; every query and
// change goes through it. Replies arrive only after the change is durable.
// Errors come back as caf::error built by mg::make_error (see errors.hpp):
// not_found for an unknown id, conflict for a duplicate active URL,
// internal when storage fails. Handles are thread-safe values.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "protocol/http_server.hpp"
#include "protocol/server_record.hpp"

namespace mg {

// -- atoms (at most 10 characters; texts unique within modelgate) -----------

using register_atom = caf::atom_constant<caf::atom("mg_reg")>;
using get_atom = caf::atom_constant<caf::atom("mg_get")>;
using list_atom = caf::atom_constant<caf::atom("mg_list")>;
using deregister_atom = caf::atom_constant<caf::atom("mg_dereg")>;
using reactivate_atom = caf::atom_constant<caf::atom("mg_react")>;
using events_atom = caf::atom_constant<caf::atom("mg_events")>;
using commit_atom = caf::atom_constant<caf::atom("mg_commit")>;
using flush_atom = caf::atom_constant<caf::atom("mg_flush")>;

// -- registry ------------------------------------------------------------------

using registry_actor = caf::typed_actor<
  // A new server (reply.created) or the reactivation of an inactive one with
  // the same URL; conflict when the URL is active.
  caf::replies_to<register_atom, registration>::with<register_reply>,
  // One record by id, active or not; not_found otherwise.
  caf::replies_to<get_atom, std::string>::with<server_record>,
  // Records passing the filter, oldest registration first.
  caf::replies_to<list_atom, list_filter>::with<std::vector<server_record>>,
  // Soft delete with a reason ("manual", "health_check"); an inactive server
  // is returned unchanged.
  caf::replies_to<deregister_atom, std::string, std::string>::with<server_record>,
  // Back to active with a clean health state; an active one is unchanged.
  caf::replies_to<reactivate_atom, std::string>::with<server_record>,
  // Transition events of one server, oldest first.
  caf::replies_to<events_atom, std::string>::with<std::vector<server_event>>,
  // Internal: the registry sends this to itself to commit what has gathered.
  caf::reacts_to<commit_atom>,
  // Commits everything pending now; replies true once durable.
  caf::replies_to<flush_atom>::with<bool>>;

// -- HTTP facade -----------------------------------------------------------------

/// One HTTP request handed from an asio thread to the admin API actor.
struct http_job {
  std::shared_ptr<http_exchange> exchange;
};

using admin_api_actor = caf::typed_actor<caf::reacts_to<http_job>>;

} // namespace mg

// Local-only messages: modelgate's actors live in one process, so these types
// travel between actors by reference-counted copy and are never serialized.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::registration)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::server_record)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::register_reply)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::list_filter)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mg::server_record>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mg::server_event>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mg::http_job)
