##! Notices for decrypted HTTP that matters: Basic authentication, credentials
##! in request URIs and executables downloaded -- things that TLS hid from the
##! sensor until the bridge decrypted them.  By default only connections that
##! came through the bridge raise them (see
##! :zeek:see:`TLSBridge::only_bridge_connections`).
##!
##! HTTP/1.x only: Zeek has no HTTP/2 analyzer of its own, so an HTTP/2
##! connection (ALPN ``h2``) shows in conn.log and tls_bridge.log, not here.

@load base/frameworks/notice
@load base/frameworks/files
@load base/protocols/http
@load ./main

module TLSBridge;

export {
	redef enum Notice::Type += {
		## HTTP Basic authentication (an ``Authorization: Basic`` header)
		## inside decrypted TLS.  The notice names the user, never the
		## password.
		Basic_Auth_In_TLS,
		## A credential-looking parameter (see
		## :zeek:see:`TLSBridge::credential_parameters`) in the query of a
		## decrypted HTTP request; its value is redacted in the notice.
		Credential_In_URI,
		## An executable downloaded inside decrypted TLS: its sniffed MIME
		## type is one of :zeek:see:`TLSBridge::executable_mime_types`, or
		## its name matches :zeek:see:`TLSBridge::executable_file_names`.
		Executable_Download,
	};

	## Raise the notices only for connections that came through the bridge
	## (:zeek:see:`TLSBridge::is_bridged`).  F: for every HTTP connection.
	const only_bridge_connections = T &redef;

	## Query parameter names (compared in lower case) that carry
	## credentials.
	const credential_parameters: set[string] = {
		"password",
		"passwd",
		"pwd",
		"token",
		"access_token",
		"api_key",
		"apikey",
		"secret",
		"client_secret",
	} &redef;

	## Sniffed MIME types of executables.
	const executable_mime_types: set[string] = {
		"application/x-dosexec",
		"application/x-executable",
		"application/x-elf",
		"application/x-sharedlib",
		"application/x-mach-o-executable",
	} &redef;

	## File names (or URI paths) of executables and scripts.
	const executable_file_names =
	    /\.([eE][xX][eE]|[dD][lL][lL]|[eE][lL][fF]|[sS][hH]|[pP][sS]1)$/
	    &redef;
}

function watched(c: connection): bool
	{
	return ! only_bridge_connections || is_bridged(c);
	}

# The URI with the values of credential parameters replaced, and the names
# of those parameters (empty: none).
type Redacted: record {
	uri: string;
	names: string;
};

function redact_credentials(uri: string): Redacted
	{
	local q = split_string1(uri, /\?/);
	if ( |q| < 2 )
		return Redacted($uri=uri, $names="");

	local names: vector of string = vector();
	local parts: vector of string = vector();
	for ( i, part in split_string(q[1], /[&;]/) )
		{
		local kv = split_string1(part, /=/);
		local name = to_lower(unescape_URI(kv[0]));
		if ( name in credential_parameters )
			{
			names += name;
			parts += kv[0] + "=<redacted>";
			}
		else
			parts += part;
		}

	local redacted = q[0] + "?" + join_string_vec(parts, "&");
	return Redacted($uri=redacted, $names=join_string_vec(names, ","));
	}

event http_request(c: connection, method: string, original_URI: string,
    unescaped_URI: string, version: string) &priority=3
	{
	if ( ! watched(c) )
		return;

	local r = redact_credentials(original_URI);
	if ( r$names == "" )
		return;

	local msg = fmt("credential parameter (%s) in a decrypted HTTP request URI",
	    r$names);
	NOTICE(Notice::Info($note=Credential_In_URI, $msg=msg, $sub=r$uri, $conn=c,
	    $identifier=cat(c$uid, c$http$trans_depth)));
	}

event http_header(c: connection, is_orig: bool, name: string, value: string)
    &priority=3
	{
	if ( ! is_orig
	    || ! ( name == "AUTHORIZATION" || name == "PROXY-AUTHORIZATION" ) )
		return;

	if ( /^[[:space:]]*[bB][aA][sS][iI][cC][[:space:]]/ !in value
	    || ! watched(c) )
		return;

	# HTTP's own handler (priority 5) decoded the user name.
	local user = "<unknown>";
	local uri = "-";
	local depth = 0;
	if ( c?$http )
		{
		if ( c$http?$username )
			user = c$http$username;
		if ( c$http?$uri )
			uri = c$http$uri;
		depth = c$http$trans_depth;
		}

	local msg = fmt("HTTP Basic authentication inside decrypted TLS (user %s)",
	    user);
	NOTICE(Notice::Info($note=Basic_Auth_In_TLS, $msg=msg, $sub=uri, $conn=c,
	    $identifier=cat(c$uid, depth)));
	}

event file_sniff(f: fa_file, meta: fa_metadata) &priority=3
	{
	if ( f$source != "HTTP" || ! f?$conns )
		return;

	local mime = meta?$mime_type ? meta$mime_type : "";
	for ( cid, c in f$conns )
		{
		if ( ! watched(c) )
			next;

		local name = "";
		if ( f?$info && f$info?$filename )
			name = f$info$filename;
		else if ( c?$http && c$http?$uri )
			name = split_string1(c$http$uri, /\?/)[0];

		if ( mime !in executable_mime_types && executable_file_names !in name )
			next;

		local msg = fmt("executable downloaded inside decrypted TLS: %s", name);
		local what = mime == "" ? "-" : mime;
		NOTICE(Notice::Info($note=Executable_Download, $msg=msg, $sub=what, $conn=c,
		    $f=f, $identifier=cat(c$uid, f$id)));
		}
	}
