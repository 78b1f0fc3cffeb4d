#!/bin/sh
# Start Mosquitto with the CityOps password and ACL files (run as root by the image's
# own entrypoint; mosquitto itself then drops to the `mosquitto` user).
#
# Builds /mosquitto/auth/passwd from
#   - gateways.passwd beside this script, if present: one `gateway_id:hash` line per
#     sensor gateway, hashed with mosquitto_passwd (see README.md); then
#   - the service accounts, whose passwords come from the environment, so the bridge's
#     and the simulator's credentials are set in exactly one place (.env):
#       cityops-bridge     MQTT_BRIDGE_PASSWORD
#       cityops-simulator  MQTT_SIMULATOR_PASSWORD
#       cityops-health     random on every start, used only by the healthcheck.
# The files are rebuilt on every start, so rotating a password is: edit, restart.
set -eu

conf_dir=$(dirname "$0")
auth_dir=/mosquitto/auth
health_file=/run/cityops-mqtt-health.pw

umask 077
mkdir -p "$auth_dir"
passwd_tmp="$auth_dir/passwd.new"
rm -f "$passwd_tmp"
if [ -s "$conf_dir/gateways.passwd" ]; then
    cp "$conf_dir/gateways.passwd" "$passwd_tmp"
else
    echo "mosquitto entrypoint: no $conf_dir/gateways.passwd, so no sensor gateway" \
        "can log in (only the simulator); see deploy/mosquitto/README.md" >&2
    : >"$passwd_tmp"
fi

mosquitto_passwd -b "$passwd_tmp" cityops-bridge \
    "${MQTT_BRIDGE_PASSWORD:?MQTT_BRIDGE_PASSWORD is not set}"
mosquitto_passwd -b "$passwd_tmp" cityops-simulator \
    "${MQTT_SIMULATOR_PASSWORD:?MQTT_SIMULATOR_PASSWORD is not set}"
health_password=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
mosquitto_passwd -b "$passwd_tmp" cityops-health "$health_password"
printf '%s' "$health_password" >"$health_file"
unset MQTT_BRIDGE_PASSWORD MQTT_SIMULATOR_PASSWORD health_password

mv "$passwd_tmp" "$auth_dir/passwd"
cp "$conf_dir/acl" "$auth_dir/acl"
# Mosquitto 2 refuses (or warns about) security files that others can read.
chown -R mosquitto:mosquitto "$auth_dir"
chmod 0700 "$auth_dir"
chmod 0600 "$auth_dir/passwd" "$auth_dir/acl"

exec /usr/sbin/mosquitto -c "$conf_dir/mosquitto.conf"
