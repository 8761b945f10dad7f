// Runs a batch of HTTP requests in parallel and prints the replies as JSON. The fake
// UrlFetchApp calls it with execFileSync, because Apps Script's fetchAll is synchronous.
'use strict';

async function one(request) {
  try {
    const response = await fetch(request.url, {
      method: request.method, headers: request.headers, body: request.body
    });
    return { status: response.status, headers: Object.fromEntries(response.headers), body: await response.text() };
  } catch (err) {
    return { error: String((err.cause && err.cause.message) || err.message) };
  }
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (part) => { input += part; });
process.stdin.on('end', async () => {
  const replies = await Promise.all(JSON.parse(input).map(one));
  process.stdout.write(JSON.stringify(replies));
});
