// NocoDB's own client (npm `nocodb-sdk`, class Api) driving NocoDB
// through the gateway. Prints PASS:/FAIL: lines and writes the ids it
// made to $STATE (JSON) for the shell test to go on with.
//   NOCODB_MODULES=... GW=http://127.0.0.1:PORT EDITOR=<token> READER=<token>
//   ATTACHMENT=<JSON of the upload answer> STATE=<file> node nocodb-client.js
'use strict';
const fs = require('fs');
const path = require('path');
const load = require('module').createRequire(path.join(process.env.NOCODB_MODULES, 'package.json'));
const { Api, UITypes } = load('nocodb-sdk');

const gw = process.env.GW;
const editor = new Api({ baseURL: gw, headers: { 'xc-token': process.env.EDITOR } });
// The reader uses the other form NocoDB accepts: Authorization: Bearer.
const reader = new Api({ baseURL: gw, headers: { Authorization: `Bearer ${process.env.READER}` } });
let failed = 0;
const pass = (m) => console.log(`PASS: ${m}`);
const fail = (m) => { console.log(`FAIL: ${m}`); failed += 1; };
const why = (e) => (e.response ? `${e.response.status} ${JSON.stringify(e.response.data)}` : String(e.message || e));

async function step(name, fn) {
  try { const v = await fn(); pass(name); return v; } catch (e) { fail(`${name}: ${why(e)}`); return undefined; }
}

(async () => {
  const state = {};
  const me = await step('sdk auth.me with the editor token', () => editor.auth.me());
  const base = await step('sdk base.create through the gateway', () => editor.base.create({ title: 'tollgate_real' }));
  if (!base) { fs.writeFileSync(process.env.STATE, JSON.stringify(state)); process.exit(1); }
  state.baseId = base.id;
  const table = await step('sdk dbTable.create with text and attachment fields', () =>
    editor.dbTable.create(base.id, {
      table_name: 'gadgets', title: 'gadgets',
      columns: [
        { column_name: 'id', title: 'Id', uidt: UITypes.ID, pk: true, ai: true },
        { column_name: 'name', title: 'Name', uidt: UITypes.SingleLineText },
        { column_name: 'files', title: 'Files', uidt: UITypes.Attachment },
      ],
    }));
  if (!table) { fs.writeFileSync(process.env.STATE, JSON.stringify(state)); process.exit(1); }
  state.tableId = table.id;
  await step('sdk dbDataTableRow.create (3 rows)', () =>
    editor.dbDataTableRow.create(table.id, [{ Name: 'alpha' }, { Name: 'beta' }, { Name: 'gamma' }]));
  const attachment = JSON.parse(process.env.ATTACHMENT || '[]');
  if (attachment.length) {
    await step('sdk dbDataTableRow.create with the uploaded attachment', () =>
      editor.dbDataTableRow.create(table.id, { Name: 'with-file', Files: attachment }));
  }
  const rows = await step('sdk dbDataTableRow.list with the editor token', () => editor.dbDataTableRow.list(table.id, { limit: 25 }));
  if (rows) {
    const names = rows.list.map((r) => r.Name).sort().join(',');
    (rows.list.length === (attachment.length ? 4 : 3)) ? pass(`rows read back: ${names}`) : fail(`rows read back: ${names}`);
  }
  // A shared (public) grid view, for the anonymous checks in the shell test.
  const views = await step('sdk dbView.list', () => editor.dbView.list(table.id));
  if (views && views.list.length) {
    const share = await step('sdk dbViewShare.create (public grid view)', () => editor.dbViewShare.create(views.list[0].id));
    if (share) state.sharedViewUuid = share.uuid;
  }
  // The reader: a viewer of the base (NocoDB's role), read-only at the gateway.
  await step('sdk auth.baseUserAdd: the reader becomes a viewer of the base', () =>
    editor.auth.baseUserAdd(base.id, { email: process.env.READER_EMAIL, roles: 'viewer' }));
  const seen = await step('sdk dbDataTableRow.list with the read-only token', () => reader.dbDataTableRow.list(table.id, { limit: 25 }));
  if (seen && seen.list.length < 3) fail(`read-only token saw ${seen.list.length} rows`);
  try {
    await reader.dbDataTableRow.create(table.id, { Name: 'intruder' });
    fail('sdk create with the read-only token was accepted');
  } catch (e) {
    const d = e.response && e.response.data;
    (e.response && e.response.status === 403 && d && d.error === 'read_only_token')
      ? pass('sdk create with the read-only token: 403 read_only_token from the gateway')
      : fail(`sdk create with the read-only token: ${why(e)}`);
  }
  if (me) state.editorEmail = me.email;
  fs.writeFileSync(process.env.STATE, JSON.stringify(state));
  process.exit(failed ? 1 : 0);
})().catch((e) => { fail(`client crashed: ${why(e)}`); process.exit(1); });
