#!/bin/sh
# Regenerates netbox-demo.sql: a small subset of the NetBox v4.2 demo data
# (https://github.com/netbox-community/netbox-demo-data, MIT, see
# LICENSE-netbox-demo-data.md) for the NetBox fidelity golden tests.
#
#   PGURL=postgres://postgres@127.0.0.1:5432 ./extract.sh /path/to/netbox-demo-v4.2.sql
#
# It loads the dump into a scratch database, keeps the tables that
# examples/netbox.yaml reads, deletes the interfaces (and their cables and
# paths, and the ports those reach) of all devices but a few, and writes the schema (without foreign
# keys, indexes, owners or grants) and the rows as INSERTs.
set -eu
dump=${1:?usage: extract.sh netbox-demo-v4.2.sql}
base=${PGURL:-postgres://postgres@127.0.0.1:5432}
db=walhook_nbdemo_extract
out=$(dirname "$0")/netbox-demo.sql
psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql "$base/postgres" -qc "DO \$\$BEGIN CREATE ROLE netbox; EXCEPTION WHEN duplicate_object THEN NULL; END\$\$"
psql "$base/$db" -q -o /dev/null -f "$dump"
tables="django_content_type extras_tag extras_taggeditem extras_customfield extras_customfield_object_types
dcim_region dcim_sitegroup tenancy_tenant tenancy_tenantgroup dcim_site dcim_site_asns ipam_asn ipam_rir
circuits_circuittermination virtualization_virtualmachine virtualization_cluster ipam_prefix dcim_rack
ipam_vlan ipam_vlangroup ipam_role ipam_vrf ipam_ipaddress ipam_fhrpgroupassignment ipam_vlantranslationpolicy
dcim_device dcim_devicetype dcim_manufacturer dcim_devicerole dcim_platform dcim_location dcim_virtualchassis
extras_configtemplate dcim_devicebay dcim_module dcim_modulebay dcim_moduletype dcim_interface dcim_interface_vdcs
dcim_virtualdevicecontext dcim_macaddress dcim_cable dcim_cabletermination dcim_cablepath
dcim_interface_tagged_vlans dcim_interface_wireless_lans wireless_wirelesslan wireless_wirelesslink
vpn_l2vpntermination vpn_l2vpn virtualization_vminterface dcim_frontport dcim_rearport dcim_consoleport
dcim_consoleserverport dcim_powerport dcim_poweroutlet circuits_circuit circuits_provider circuits_providernetwork"
psql "$base/$db" -q <<SQL
DELETE FROM dcim_interface WHERE device_id NOT IN (1, 14, 98, 99);
DELETE FROM dcim_cabletermination WHERE cable_id NOT IN (SELECT cable_id FROM dcim_interface WHERE cable_id IS NOT NULL);
DELETE FROM dcim_cable WHERE id NOT IN (SELECT cable_id FROM dcim_cabletermination);
DELETE FROM virtualization_vminterface;
DELETE FROM dcim_cablepath WHERE id NOT IN (SELECT _path_id FROM dcim_interface WHERE _path_id IS NOT NULL);
-- device components only where a kept cable or path reaches them
DELETE FROM dcim_frontport WHERE id NOT IN (SELECT termination_id FROM dcim_cabletermination WHERE termination_type_id = (SELECT id FROM django_content_type WHERE model = 'frontport'));
DELETE FROM dcim_rearport WHERE id NOT IN (SELECT termination_id FROM dcim_cabletermination WHERE termination_type_id = (SELECT id FROM django_content_type WHERE model = 'rearport'));
DELETE FROM dcim_consoleport WHERE id NOT IN (SELECT termination_id FROM dcim_cabletermination WHERE termination_type_id = (SELECT id FROM django_content_type WHERE model = 'consoleport'));
DELETE FROM dcim_consoleserverport WHERE id NOT IN (SELECT termination_id FROM dcim_cabletermination WHERE termination_type_id = (SELECT id FROM django_content_type WHERE model = 'consoleserverport'));
DELETE FROM dcim_powerport WHERE id NOT IN (SELECT termination_id FROM dcim_cabletermination WHERE termination_type_id = (SELECT id FROM django_content_type WHERE model = 'powerport'));
DELETE FROM dcim_poweroutlet WHERE id NOT IN (SELECT termination_id FROM dcim_cabletermination WHERE termination_type_id = (SELECT id FROM django_content_type WHERE model = 'poweroutlet'));
SQL
args=""
for t in $tables; do args="$args -t public.$t"; done
{
  echo "-- A subset of the NetBox v4.2 demo data (netbox-community/netbox-demo-data, MIT License,"
  echo "-- Copyright (c) 2021 Jeremy Stretch; see LICENSE-netbox-demo-data.md), made by extract.sh:"
  echo "-- the tables examples/netbox.yaml reads, the interfaces of devices 1, 14, 98 and 99 only."
  echo "SET client_min_messages = warning;"
  echo "CREATE COLLATION IF NOT EXISTS public.natural_sort (provider = icu, locale = 'und-u-kn-true');"
  pg_dump "$base/$db" --schema-only --no-owner --no-privileges $args |
    grep -v '^SET \|^SELECT pg_catalog.set_config\|^--\|^\\\(un\)\?restrict' |
    python3 -c '
import re, sys
s = sys.stdin.read()
# drop foreign keys and secondary indexes: the tests need the rows, not the checks
s = re.sub(r"ALTER TABLE ONLY [^;]*FOREIGN KEY[^;]*;\n", "", s)
s = re.sub(r"CREATE (UNIQUE )?INDEX [^;]*;\n", "", s)
s = re.sub(r"ALTER TABLE ONLY [^;]*ADD CONSTRAINT [^;]*UNIQUE[^;]*;\n", "", s)
s = re.sub(r"\n{3,}", "\n\n", s)
sys.stdout.write(s)'
  pg_dump "$base/$db" --data-only --no-owner --inserts --rows-per-insert=200 $args |
    grep -v '^SET \|^SELECT pg_catalog.set_config\|^--\|^\\\(un\)\?restrict' | grep -v '^$'
} > "$out"
psql "$base/postgres" -qc "DROP DATABASE $db"
