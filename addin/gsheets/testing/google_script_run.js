// A stand-in for google.script.run in the sidebar's page, as Google documents it
// (developers.google.com/apps-script/guides/html/reference/run and .../communication): calls are
// asynchronous; withSuccessHandler, withFailureHandler and withUserObject each return a runner;
// parameters may be only primitives, null, and arrays and plain objects of them (a Date, a
// function or a DOM element fails the request; undefined in an array becomes null); the failure
// handler gets an Error. Each call is forwarded to the harness's Code.gs (sidebar_server.js).
(function () {
  'use strict';

  function legal(value, where) {
    if (value === null || ['string', 'number', 'boolean', 'undefined'].includes(typeof value)) return;
    if (Array.isArray(value)) { value.forEach((v, i) => legal(v, `${where}[${i}]`)); return; }
    if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
      Object.keys(value).forEach((k) => legal(value[k], `${where}.${k}`));
      return;
    }
    throw new TypeError(`google.script.run cannot pass ${where}: ${Object.prototype.toString.call(value)}`);
  }

  function runner(success, failure, userObject) {
    return new Proxy({}, {
      get(_, name) {
        if (name === 'withSuccessHandler') return (f) => runner(f, failure, userObject);
        if (name === 'withFailureHandler') return (f) => runner(success, f, userObject);
        if (name === 'withUserObject') return (o) => runner(success, failure, o);
        return (...args) => {
          args.forEach((a, i) => legal(a, `argument ${i + 1}`));
          fetch('/call', { method: 'POST', headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ name: String(name), args }) })
            .then((r) => r.json())
            .then((reply) => {
              if ('error' in reply) { if (failure) failure(new Error(reply.error), userObject); }
              else if (success) success(reply.value, userObject);
            }, (err) => { if (failure) failure(new Error(`NetworkError: ${err.message}`), userObject); });
        };
      }
    });
  }

  window.google = { script: { run: runner(null, null, undefined), host: { close() {} } } };
})();
