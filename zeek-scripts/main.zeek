##! Reads the flow log of tls-ids-bridge and ties every synthetic cleartext
##! connection that the bridge re-injects back to the original TLS
##! connection: its endpoints, TLS version, cipher suite, SNI, ALPN and where
##! the session secrets came from (the key origin).
##!
##! The flow log is JSON lines, one object per finished TCP connection,
##! written by ``tls-bridge decrypt --flows FILE``.  Zeek has no JSON input
##! reader, so the file is read line by line with the Input framework's raw
##! reader and every line is parsed with :zeek:see:`from_json` (Zeek 6.0 or
##! later) into :zeek:see:`TLSBridge::Flow`.
##!
##! Facts are keyed by the synthetic connection's 4-tuple (the flow's
##! ``synthetic.client`` and ``synthetic.server``).  A flow record may arrive
##! before Zeek sees its synthetic connection (reading a trace, or a bridge
##! that logged the original connection first) or after it (live: the bridge
##! emits the cleartext as it decrypts, and logs the flow when the original
##! connection ends).  Both orders are handled: a record that arrives first
##! waits (at most :zeek:see:`TLSBridge::fact_expiry`) for its connection; a
##! record that arrives while the connection is alive annotates it at once; a
##! record that arrives after the connection ended still gets its uid in
##! tls_bridge.log.  What was logged before the facts arrived (a finished
##! connection's conn.log line, earlier http.log lines) stays unannotated.

@load base/frameworks/input
@load base/protocols/conn
@load base/utils/addrs

module TLSBridge;

export {
	## The tls_bridge.log stream: one line per flow log record read.
	redef enum Log::ID += { LOG };

	## A default logging policy hook for the stream.
	global log_policy: Log::PolicyHook;

	## Path of the bridge's flow log (``tls-bridge decrypt --flows``).  Empty:
	## nothing is read; records can still be handed to
	## :zeek:see:`TLSBridge::add_flow`.
	const flow_log = "" &redef;

	## Follow the flow log as the bridge appends to it (Input::STREAM).  When F,
	## or when Zeek reads a trace (``zeek -r``), the file is read once
	## (Input::MANUAL).
	const follow_flow_log = T &redef;

	## When Zeek reads a trace, hold packet processing until the flow log has
	## been read, so that every record is known before its synthetic
	## connection starts: offline, conn.log and http.log are annotated
	## completely.
	const hold_trace_until_flow_log_read = T &redef;

	## How long a flow record waits for its synthetic connection, and how long
	## the uid of an ended synthetic connection is remembered for a flow record
	## that comes later.
	const fact_expiry = 10min &redef;

	## Only while the flow log is followed (Input::STREAM): flow records
	## that ended longer ago than this (by ``ts_end``) are skipped, so that a
	## restarted Zeek that reads the flow log from its beginning does not log
	## old flows again.  Skipped records are counted in
	## :zeek:see:`TLSBridge::old_flows_skipped` and reported once.  A flow
	## log read once (a trace, or ``follow_flow_log=F``) is read whole.
	## Zero: read all.
	const max_flow_age = 10min &redef;

	## Source MAC addresses of the bridge's synthetic frames (lower case):
	## ``--mark-mac`` for client-side frames and the next address for
	## server-side ones.  A connection whose originator frames carry one of
	## them is a bridge connection even before its flow record arrives.  An
	## empty set treats every connection as a possible bridge connection (a
	## feed without link layer).
	const marker_macs: set[string] = {
		"02:00:00:00:00:01",
		"02:00:00:00:00:02",
	} &redef;

	## Where the session secrets of a connection came from: the ``key_origin``
	## object of a flow record (the harvester's metadata, never secrets).
	type KeyOrigin: record {
		## Host the harvester ran on.
		host: string &optional;
		## Virtual machine the secrets were read from.
		vm: string &optional;
		## Process id of the TLS endpoint.
		pid: count &optional;
		## Command name of that process.
		comm: string &optional;
		## Executable (or key log file) the secrets were read from.
		exe: string &optional;
		## TLS library.
		library: string &optional;
		## Build id of the TLS library.
		build_id: string &optional;
		## What made the harvester read the secrets.
		trigger: string &optional;
		## Key feed publisher id.
		publisher: string &optional;
	};

	## One direction of a flow record (``c2s``/``s2c``).
	type Direction: record {
		## Decrypted application bytes.
		bytes: count &optional;
		## SHA-256 of the decrypted application bytes (hex).
		sha256: string &optional;
		## TLS records seen.
		records: count &optional;
		## TLS records decrypted.
		decrypted_records: count &optional;
		## Bytes missing from the capture.
		gap_bytes: count &optional;
	};

	## The synthetic cleartext connection of a flow record (``synthetic``).
	type Synthetic: record {
		## Client side, ``ip:port`` or ``[v6]:port``.
		client: string &optional;
		## Server side, ``ip:port`` or ``[v6]:port``.
		server: string &optional;
		## 802.1Q tag of the synthetic frames.
		vlan: count &optional;
		## Source MAC of the client-side frames.
		source_mac: string &optional;
		## Segments emitted.
		segments: count &optional;
		## Cleartext bytes client to server.
		bytes_c2s: count &optional;
		## Cleartext bytes server to client.
		bytes_s2c: count &optional;
	};

	## One line of the flow log: the fields this package uses (the others
	## are ignored).  Every field is optional: a field the bridge does not
	## write, or writes as null, stays unset.
	type Flow: record {
		## The bridge's connection number.
		flow_id: count &optional;
		## First packet of the original connection.
		ts_start: time &optional;
		## Last packet of the original connection.
		ts_end: time &optional;
		## Client of the original connection, ``ip:port`` or ``[v6]:port``.
		client: string &optional;
		## Server of the original connection.
		server: string &optional;
		## ``decrypted``, ``no_keys``, ``wrong_key``, ``gap``, ``not_tls``,
		## ``unsupported``, ``partial``, ``no_handshake``.
		status: string &optional;
		## Why, when the status is not ``decrypted``.
		reason: string &optional;
		## ``fin``, ``rst``, ``idle``, ``evicted``, ``end_of_capture``.
		ended_by: string &optional;
		## ``TLSv1.2`` or ``TLSv1.3``.
		tls_version: string &optional;
		## IANA name of the cipher suite.
		cipher_suite: string &optional;
		## Server name from the ClientHello.
		sni: string &optional;
		## Negotiated ALPN protocol.
		alpn: string &optional;
		## Whether the session was resumed.
		resumed: bool &optional;
		## Where the secrets came from; unset for a key log.
		key_origin: KeyOrigin &optional;
		## Client to server.
		c2s: Direction &optional;
		## Server to client.
		s2c: Direction &optional;
		## The re-injected cleartext connection; unset when nothing was
		## emitted.
		synthetic: Synthetic &optional;
	};

	## What a synthetic connection is annotated with
	## (``connection$tls_bridge``).
	type Facts: record {
		## The bridge's connection number.
		flow_id: count &optional;
		## Client address of the original connection.
		orig_h: addr &optional;
		## Client port of the original connection.
		orig_p: port &optional;
		## Server address of the original connection.
		resp_h: addr &optional;
		## Server port of the original connection (the synthetic one differs
		## with ``--server-port``).
		resp_p: port &optional;
		## TLS version of the original connection.
		version: string &optional;
		## Cipher suite of the original connection.
		cipher: string &optional;
		## Server name indication.
		sni: string &optional;
		## Negotiated ALPN protocol.
		alpn: string &optional;
		## The key origin in one string, e.g. ``vm=web1 pid=812 comm=nginx
		## trigger=uprobe``.
		origin: string &optional;
		## The key origin as read.
		key_origin: KeyOrigin &optional;
	};

	## The tls_bridge.log record.
	type Info: record {
		## Start of the original connection (else the time it was read).
		ts: time &log;
		## Uid of the synthetic connection, once Zeek has seen it.
		uid: string &log &optional;
		## The bridge's connection number.
		flow_id: count &log &optional;
		## Client address of the original connection.
		orig_h: addr &log &optional;
		## Client port of the original connection.
		orig_p: port &log &optional;
		## Server address of the original connection.
		resp_h: addr &log &optional;
		## Server port of the original connection.
		resp_p: port &log &optional;
		## Server port of the synthetic connection; unset when the bridge
		## emitted none.
		synthetic_resp_p: port &log &optional;
		## Decryption status.
		status: string &log &optional;
		## Why, when the status is not ``decrypted``.
		reason: string &log &optional;
		## TLS version.
		version: string &log &optional;
		## Cipher suite.
		cipher: string &log &optional;
		## Server name indication.
		sni: string &log &optional;
		## Negotiated ALPN protocol.
		alpn: string &log &optional;
		## Whether the session was resumed.
		resumed: bool &log &optional;
		## Key origin: harvester host.
		origin_host: string &log &optional;
		## Key origin: virtual machine.
		origin_vm: string &log &optional;
		## Key origin: process id.
		origin_pid: count &log &optional;
		## Key origin: command name.
		origin_comm: string &log &optional;
		## Key origin: trigger.
		origin_trigger: string &log &optional;
		## Decrypted application bytes client to server.
		c2s_bytes: count &log &optional;
		## Decrypted application bytes server to client.
		s2c_bytes: count &log &optional;
	};

	## Parses one flow log line.  Returns a :zeek:see:`TLSBridge::Flow`
	## without ``status`` when the line is not a flow record (the failure is
	## counted and reported).
	global parse_flow: function(line: string): Flow;

	## Takes one flow record: logs it to tls_bridge.log and annotates its
	## synthetic connection (now, or when it appears).
	global add_flow: function(f: Flow);

	## Whether a connection came through the bridge: it has flow facts, or
	## its originator frames carry one of :zeek:see:`TLSBridge::marker_macs`.
	global is_bridged: function(c: connection): bool;

	## Called whenever a connection's facts are set or may need copying into
	## protocol log records (conn.log, http.log).  Handlers copy
	## ``c$tls_bridge`` where they need it.
	global annotate: hook(c: connection);

	## Raised when a connection gets its flow facts.
	global bridged_connection: event(c: connection, facts: Facts);

	## Raised once the flow log has been read (read-once mode only).
	global flow_log_read: event(path: string);

	## Flow log lines that could not be parsed.
	global parse_failures = 0;

	## Flow records skipped as older than :zeek:see:`TLSBridge::max_flow_age`.
	global old_flows_skipped = 0;
}

redef record connection += {
	## The original TLS connection behind a synthetic one.
	tls_bridge: Facts &optional;
};

type Line: record {
	s: string;
};

type Endpoint: record {
	h: addr &optional;
	p: port &optional;
};

# A flow record whose synthetic connection Zeek has not seen yet.
type Pending: record {
	facts: Facts;
	info: Info;
	## Network time it arrived, or, before the first packet (a trace held
	## until the flow log is read), the end of the original connection.
	since: time;
};

const stream_name = "tls-bridge-flow-log";

# Whether packet processing was suspended until the flow log is read.
global holding = F;

# Whether the flow log is followed (Input::STREAM) rather than read once.
global following = F;

global flush_pending: function(t: table[addr, port, addr, port] of Pending,
    orig_h: addr, orig_p: port, resp_h: addr, resp_p: port): interval;

# Flow records waiting for their synthetic connection.
global pending: table[addr, port, addr, port] of Pending
    &create_expire=fact_expiry &expire_func=flush_pending;

# Live synthetic connections (marked frames) without facts yet.
global live: table[addr, port, addr, port] of connection;

# Uids of ended synthetic connections that never got facts.
global ended: table[addr, port, addr, port] of string
    &create_expire=fact_expiry;

global flow_line: event(desc: Input::EventDescription, tpe: Input::Event,
    s: string);

# Table expiry counts from the network time of the insertion, which is 0 for
# records read before the first packet of a trace: count from "since".
function flush_pending(t: table[addr, port, addr, port] of Pending,
    orig_h: addr, orig_p: port, resp_h: addr, resp_p: port): interval
	{
	local p = t[orig_h, orig_p, resp_h, resp_p];
	local age = network_time() - p$since;
	if ( age < fact_expiry )
		return fact_expiry - age;

	Log::write(LOG, p$info);
	return 0secs;
	}

function marked(c: connection): bool
	{
	if ( |marker_macs| == 0 )
		return T;

	return c$orig?$l2_addr && to_lower(c$orig$l2_addr) in marker_macs;
	}

function is_bridged(c: connection): bool
	{
	return c?$tls_bridge || marked(c);
	}

# "ip:port" or "[v6]:port"; both fields unset when malformed.
function parse_endpoint(s: string): Endpoint
	{
	local ep = Endpoint();
	local parts = split_string(s, /:/);
	if ( |parts| < 2 )
		return ep;

	local pstr = parts[|parts| - 1];
	if ( /^[0-9]{1,5}$/ !in pstr || to_count(pstr) > 65535 )
		return ep;

	local host = sub(s, /:[0-9]+$/, "");
	host = sub(sub(host, /^\[/, ""), /\]$/, "");

	if ( ! is_valid_ip(host) )
		return ep;

	ep$h = to_addr(host);
	ep$p = count_to_port(to_count(pstr), tcp);
	return ep;
	}

function origin_summary(ko: KeyOrigin): string
	{
	local parts: vector of string = vector();
	if ( ko?$host )
		parts += fmt("host=%s", ko$host);
	if ( ko?$vm )
		parts += fmt("vm=%s", ko$vm);
	if ( ko?$pid )
		parts += fmt("pid=%d", ko$pid);
	if ( ko?$comm )
		parts += fmt("comm=%s", ko$comm);
	if ( ko?$trigger )
		parts += fmt("trigger=%s", ko$trigger);
	return join_string_vec(parts, " ");
	}

function parse_flow(line: string): Flow
	{
	local res = from_json(line, Flow);
	local f = Flow();
	if ( res$valid && res?$v )
		f = res$v as Flow;

	if ( ! f?$status )
		{
		++parse_failures;
		local excerpt = sub_bytes(line, 1, 200);
		Reporter::warning(fmt("TLSBridge: not a flow record: %s", excerpt));
		}

	return f;
	}

function make_info(f: Flow): Info
	{
	local info = Info($ts=f?$ts_start ? f$ts_start : network_time());
	if ( f?$flow_id )
		info$flow_id = f$flow_id;
	if ( f?$status )
		info$status = f$status;
	if ( f?$reason && f$reason != "" )
		info$reason = f$reason;
	if ( f?$tls_version )
		info$version = f$tls_version;
	if ( f?$cipher_suite )
		info$cipher = f$cipher_suite;
	if ( f?$sni )
		info$sni = f$sni;
	if ( f?$alpn )
		info$alpn = f$alpn;
	if ( f?$resumed )
		info$resumed = f$resumed;
	if ( f?$c2s && f$c2s?$bytes )
		info$c2s_bytes = f$c2s$bytes;
	if ( f?$s2c && f$s2c?$bytes )
		info$s2c_bytes = f$s2c$bytes;

	if ( f?$client )
		{
		local client = parse_endpoint(f$client);
		if ( client?$p )
			{
			info$orig_h = client$h;
			info$orig_p = client$p;
			}
		}
	if ( f?$server )
		{
		local server = parse_endpoint(f$server);
		if ( server?$p )
			{
			info$resp_h = server$h;
			info$resp_p = server$p;
			}
		}

	if ( f?$key_origin )
		{
		local ko = f$key_origin;
		if ( ko?$host )
			info$origin_host = ko$host;
		if ( ko?$vm )
			info$origin_vm = ko$vm;
		if ( ko?$pid )
			info$origin_pid = ko$pid;
		if ( ko?$comm )
			info$origin_comm = ko$comm;
		if ( ko?$trigger )
			info$origin_trigger = ko$trigger;
		}

	return info;
	}

function make_facts(f: Flow, info: Info): Facts
	{
	local facts = Facts();
	if ( info?$flow_id )
		facts$flow_id = info$flow_id;
	if ( info?$orig_h )
		{
		facts$orig_h = info$orig_h;
		facts$orig_p = info$orig_p;
		}
	if ( info?$resp_h )
		{
		facts$resp_h = info$resp_h;
		facts$resp_p = info$resp_p;
		}
	if ( info?$version )
		facts$version = info$version;
	if ( info?$cipher )
		facts$cipher = info$cipher;
	if ( info?$sni )
		facts$sni = info$sni;
	if ( info?$alpn )
		facts$alpn = info$alpn;
	if ( f?$key_origin )
		{
		facts$key_origin = f$key_origin;
		facts$origin = origin_summary(f$key_origin);
		}

	return facts;
	}

function attach(c: connection, facts: Facts)
	{
	c$tls_bridge = facts;
	hook annotate(c);
	event bridged_connection(c, facts);
	}

function add_flow(f: Flow)
	{
	local info = make_info(f);
	if ( ! f?$synthetic || ! f$synthetic?$client || ! f$synthetic?$server )
		{
		# Nothing was re-injected for this connection.
		Log::write(LOG, info);
		return;
		}

	local cl = parse_endpoint(f$synthetic$client);
	local sv = parse_endpoint(f$synthetic$server);
	if ( ! cl?$p || ! sv?$p )
		{
		Reporter::warning(fmt("TLSBridge: flow %s: bad synthetic endpoints %s -> %s",
		    info?$flow_id ? cat(info$flow_id) : "?", f$synthetic$client,
		    f$synthetic$server));
		Log::write(LOG, info);
		return;
		}

	local oh = cl$h;
	local op = cl$p;
	local rh = sv$h;
	local rp = sv$p;
	info$synthetic_resp_p = rp;
	local facts = make_facts(f, info);

	if ( [oh, op, rh, rp] in live )
		{
		local c = live[oh, op, rh, rp];
		delete live[oh, op, rh, rp];
		info$uid = c$uid;
		attach(c, facts);
		Log::write(LOG, info);
		return;
		}

	if ( [oh, op, rh, rp] in ended )
		{
		info$uid = ended[oh, op, rh, rp];
		delete ended[oh, op, rh, rp];
		Log::write(LOG, info);
		return;
		}

	if ( [oh, op, rh, rp] in pending )
		# The same 4-tuple again before its connection: log the older record.
		Log::write(LOG, pending[oh, op, rh, rp]$info);

	local since = network_time();
	if ( since == double_to_time(0.0) && f?$ts_end )
		since = f$ts_end;

	pending[oh, op, rh, rp] = Pending($facts=facts, $info=info, $since=since);
	}

event flow_line(desc: Input::EventDescription, tpe: Input::Event, s: string)
	{
	if ( /^[[:space:]]*$/ in s )
		return;

	local f = parse_flow(s);
	if ( ! f?$status )
		return;

	if ( following
	    && max_flow_age > 0secs
	    && f?$ts_end
	    && f$ts_end < current_time() - max_flow_age )
		{
		if ( ++old_flows_skipped == 1 )
			Reporter::info(fmt("TLSBridge: skipping flow records older than max_flow_age (%s), from flow %s on",
			    max_flow_age, f?$flow_id ? cat(f$flow_id) : "?"));
		return;
		}

	add_flow(f);
	}

event Input::end_of_data(name: string, source: string)
	{
	if ( name != stream_name )
		return;

	if ( holding )
		{
		holding = F;
		continue_processing();
		}

	event flow_log_read(source);
	}

event zeek_init() &priority=5
	{
	Log::create_stream(TLSBridge::LOG, Log::Stream($columns=Info,
	    $path="tls_bridge", $policy=log_policy));

	if ( flow_log == "" )
		return;

	local once = reading_traces() || ! follow_flow_log;
	following = ! once;
	if ( once && file_size(flow_log) < 0.0 )
		{
		Reporter::error(fmt("TLSBridge: flow log %s does not exist", flow_log));
		return;
		}

	Input::add_event(Input::EventDescription($source=flow_log,
	    $reader=Input::READER_RAW,
	    $mode=once ? Input::MANUAL : Input::STREAM, $name=stream_name,
	    $fields=Line, $ev=flow_line, $want_record=F));

	if ( reading_traces() && hold_trace_until_flow_log_read )
		{
		holding = T;
		suspend_processing();
		}
	}

event new_connection(c: connection) &priority=5
	{
	local oh = c$id$orig_h;
	local op = c$id$orig_p;
	local rh = c$id$resp_h;
	local rp = c$id$resp_p;
	if ( [oh, op, rh, rp] in pending )
		{
		local p = pending[oh, op, rh, rp];
		delete pending[oh, op, rh, rp];
		p$info$uid = c$uid;
		attach(c, p$facts);
		Log::write(LOG, p$info);
		return;
		}

	if ( marked(c) )
		live[oh, op, rh, rp] = c;
	}

event connection_state_remove(c: connection) &priority=-20
	{
	local oh = c$id$orig_h;
	local op = c$id$orig_p;
	local rh = c$id$resp_h;
	local rp = c$id$resp_p;
	if ( [oh, op, rh, rp] !in live )
		return;

	delete live[oh, op, rh, rp];
	ended[oh, op, rh, rp] = c$uid;
	}

event zeek_done()
	{
	# Flow records whose synthetic connection never appeared, in flow order.
	local infos: vector of Info = vector();
	for ( [oh, op, rh, rp], p in pending )
		infos += p$info;

	sort(infos, function(a: Info, b: Info): int
		{
		local x = a?$flow_id ? a$flow_id : 0;
		local y = b?$flow_id ? b$flow_id : 0;
		if ( x < y )
			return -1;
		if ( x > y )
			return 1;
		return 0;
		});

	for ( i in infos )
		Log::write(LOG, infos[i]);

	clear_table(pending);
	}
