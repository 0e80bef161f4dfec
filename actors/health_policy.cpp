#include "actors/health_policy.hpp"

namespace mg {

namespace {

server_event make_event(const server_record& rec, epoch_ms at, const char* what,
                        std::optional<std::string> detail) {
  return server_event{rec.id, at, what, std::move(detail)};
}

} // namespace

policy_result apply_probe(const server_record& record, uint64_t generation,
                          const probe_outcome& outcome, const health_config& config) {
  policy_result result;
  result.record = record;
  auto step = apply_probe_in_place(result.record, generation, outcome, config);
  result.transition = step.transition;
  result.events = std::move(step.events);
  return result;
}

policy_step apply_probe_in_place(server_record& rec, uint64_t generation,
                                 const probe_outcome& outcome, const health_config& config) {
  policy_step result;
  if (!rec.is_active || generation != rec.generation)
    return result; // dropped: the server changed since the probe started
  auto before = rec.status;
  rec.last_check_at = outcome.at;
  // Only a probe that got a whole response has a time to its last byte.
  rec.last_response_time_ms = outcome.status_code ? outcome.response_time_ms : std::nullopt;
  rec.updated_at = outcome.at;
  if (outcome.healthy) {
    rec.status = server_status::healthy;
    rec.consecutive_failures = 0;
    rec.last_error.reset();
    rec.last_error_kind.reset();
    rec.early_failure_pending = false;
  } else {
    rec.status = server_status::unhealthy;
    // A failure found between probes counts at once, as the next probe's
    // failure found early; that probe, failing too, confirms it instead of
    // counting again, and only a probe deregisters. So the count and the
    // deregistration come when they would have without the early finding.
    if (!rec.early_failure_pending)
      rec.consecutive_failures += 1;
    rec.early_failure_pending = outcome.between_probes;
    rec.last_error = outcome.error;
    rec.last_error_kind = outcome.error_kind;
  }
  result.transition = health_transition::unchanged;
  if (rec.status != before) {
    result.transition = health_transition::changed;
    result.events.push_back(make_event(rec, outcome.at, to_string(rec.status),
                                       outcome.healthy ? std::nullopt
                                                       : std::optional<std::string>{
                                                         outcome.error_kind + ": " + outcome.error}));
  }
  if (!outcome.healthy && !outcome.between_probes && config.auto_deregister
      && rec.consecutive_failures >= config.max_failures) {
    rec.is_active = false;
    rec.deregistered_at = outcome.at;
    rec.deregistered_reason = "health_check";
    ++rec.generation;
    result.transition = health_transition::deregistered;
    result.events.push_back(make_event(rec, outcome.at, "deregistered", "health_check"));
  }
  return result;
}

policy_result apply_passive_failure(const server_record& record, uint64_t generation,
                                    const std::string& error, const std::string& error_kind,
                                    epoch_ms at) {
  policy_result result;
  result.record = record;
  if (!record.is_active || generation != record.generation)
    return result;
  auto& rec = result.record;
  result.transition = health_transition::unchanged;
  rec.last_error = error;
  rec.last_error_kind = error_kind;
  rec.updated_at = at;
  if (rec.status != server_status::unhealthy) {
    rec.status = server_status::unhealthy;
    result.transition = health_transition::changed;
    result.events.push_back(make_event(rec, at, "unhealthy", "gateway: " + error_kind + ": " + error));
  }
  return result;
}

} // namespace mg
