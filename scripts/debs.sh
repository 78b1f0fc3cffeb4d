# Sourced by the scripts here: install_debs WHAT PACKAGE... installs with apt-get the
# Debian packages of the list that are missing (as root, or through sudo).
install_debs() {
  local what=$1; shift
  local need=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  echo "installing Debian packages for $what: ${need[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}
