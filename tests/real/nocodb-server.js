// Starts NocoDB (the npm `nocodb` package) on 127.0.0.1 only, the way
// NocoDB's own docker entry point does but with an explicit address:
//   NOCODB_MODULES=<dir with node_modules> PORT=<port> node nocodb-server.js
// Metadata (noco.db) and attachments (nc/uploads) go to the working
// directory unless NC_DB / NC_ATTACHMENT_* say otherwise.
'use strict';
const path = require('path');
const load = require('module').createRequire(path.join(process.env.NOCODB_MODULES, 'package.json'));
const express = load('express');
const { Noco } = load('nocodb');

const port = Number(process.env.PORT);
const app = express();
app.enable('trust proxy');
app.disable('x-powered-by');
const server = app.listen(port, '127.0.0.1', async () => {
  app.use(await Noco.init({}, server, app));
  console.log(`nocodb listening on 127.0.0.1:${port}`);
});
