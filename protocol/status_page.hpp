// The status page served at `GET /ui`: one self-contained HTML document.
//
// Inline CSS and JavaScript, no other file and no external host (the daemon
// often runs where there is no internet). In the browser it polls the admin
// API every 2 s (`GET v1/servers?include_inactive=true`, `GET
// v1/health-checker`, and `GET v1/servers/{id}/events` only when a server's
// state changed), asks for the admin token once when the API answers 401, and
// sends it as `Authorization: Bearer` from then on. It needs no token to be
// served. Pure data, any thread.
#pragma once

#include <string>

namespace mg {

/// The page, built once on first use; the reference stays valid for the life
/// of the program.
const std::string& status_page_html();

} // namespace mg
