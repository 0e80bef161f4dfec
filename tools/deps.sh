# Sourced by tools/run.sh and tools/test.sh: installs the Debian packages
# modelgate needs that are not installed yet (apt-get update first, and only
# when something is missing).
MODELGATE_PACKAGES=(
  g++ cmake make ccache pkg-config
  libcaf-dev libboost1.81-dev libsqlitecpp-dev libsqlite3-dev nlohmann-json3-dev
  catch2 libcli11-dev sqlite3
)

install_missing_packages() {
  local missing=()
  local pkg
  for pkg in "${MODELGATE_PACKAGES[@]}" "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "installing missing packages: ${missing[*]}" >&2
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
}
