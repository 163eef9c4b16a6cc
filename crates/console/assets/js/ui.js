// Small DOM helpers: elements are built with textContent, never innerHTML, so nothing the
// server returns is ever parsed as markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function status(msg) {
  const el = document.getElementById('status');
  el.textContent = msg;
  clearTimeout(status.timer);
  status.timer = setTimeout(() => { el.textContent = ''; }, 4000);
}

export function time(ms) {
  if (ms === null || ms === undefined || ms === 0) return '';
  return new Date(Number(ms)).toISOString().replace('T', ' ').slice(0, 16) + ' UTC';
}

export function badge(text) {
  return h('span', { class: `badge ${text}` }, text);
}

/** A table in a horizontally scrolling box: `columns` are headers, `rows` arrays of cells. */
export function table(caption, columns, rows, opts = {}) {
  const t = h('table', { id: opts.id },
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.length
      ? rows.map((r) => h('tr', r.attrs || {}, (r.cells || r).map((c) => h('td', {}, c))))
      : h('tr', {}, h('td', { colspan: columns.length }, opts.empty || 'None yet.'))));
  return h('div', { class: 'scroll' }, t);
}

/** A definition list of [term, value] pairs. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** Asks in a modal dialog; resolves to true on Confirm. */
export function confirm(text, confirmLabel = 'Confirm') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = confirmLabel;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  // Closed by script rather than by submitting the dialog's form; Escape closes it too.
  const onOk = (e) => { e.preventDefault(); dialog.close('ok'); };
  const onCancel = (e) => { e.preventDefault(); dialog.close('cancel'); };
  return new Promise((resolve) => {
    ok.addEventListener('click', onOk);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('close', () => {
      ok.removeEventListener('click', onOk);
      cancel.removeEventListener('click', onCancel);
      resolve(dialog.returnValue === 'ok');
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
    cancel.focus();
  });
}

let seq = 0;

/**
 * A form whose errors show at the field the server names. `fields`: {name, label, type
 * ('text', 'number', 'select', 'checkbox', 'textarea'), options ([value, label] pairs), value,
 * hint, required}. `aliases` maps a field name the server may use to one of the form's.
 * `onSubmit(values)` may throw an ApiError; its `field` picks the input.
 */
export function form({ id, legend, fields, submit, onSubmit, aliases = {} }) {
  id = id || `form-${++seq}`;
  const inputs = {};
  const rows = fields.map((f) => {
    const fid = `${id}-${f.name}`;
    const described = [f.hint ? `${fid}-hint` : null, `${fid}-error`].filter(Boolean).join(' ');
    let input;
    if (f.type === 'select') {
      input = h('select', { id: fid, name: f.name, 'aria-describedby': described },
        f.options.map(([v, l]) => h('option', { value: v, selected: String(v) === String(f.value ?? '') }, l)));
    } else if (f.type === 'textarea') {
      input = h('textarea', { id: fid, name: f.name, rows: 3, 'aria-describedby': described }, f.value || '');
    } else if (f.type === 'checkbox') {
      input = h('input', { id: fid, name: f.name, type: 'checkbox', checked: !!f.value, 'aria-describedby': described });
    } else {
      input = h('input', {
        id: fid, name: f.name, type: f.type || 'text', value: f.value ?? '',
        required: f.required, min: f.type === 'number' ? 0 : undefined,
        inputmode: f.type === 'number' ? 'numeric' : undefined,
        placeholder: f.placeholder, autocomplete: 'off', 'aria-describedby': described,
      });
    }
    const label = h('label', { for: fid }, f.label);
    const err = h('p', { class: 'error', id: `${fid}-error` });
    inputs[f.name] = { input, err, f };
    return h('div', { class: f.type === 'checkbox' ? 'field check' : 'field' },
      f.type === 'checkbox' ? [input, label] : [label, input],
      f.hint ? h('p', { class: 'hint', id: `${fid}-hint` }, f.hint) : null, err);
  });
  const formErr = h('p', { class: 'error', id: `${id}-error`, role: 'alert' });
  const button = h('button', { type: 'submit', id: `${id}-submit` }, submit);
  const el = h('form', { id, class: 'card', novalidate: true },
    h('fieldset', {}, h('legend', {}, legend), rows, formErr, button));
  el.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    formErr.textContent = '';
    for (const { input, err } of Object.values(inputs)) {
      err.textContent = '';
      input.removeAttribute('aria-invalid');
    }
    const values = {};
    for (const [name, { input, f }] of Object.entries(inputs)) {
      values[name] = f.type === 'checkbox' ? input.checked : input.value.trim();
    }
    button.disabled = true;
    try {
      await onSubmit(values, el);
    } catch (e) {
      // `definition.backends[2].weight` is shown at `backends`: the most specific part of
      // the field's path that names an input, list indexes left out.
      const parts = String(e.field || '').split('.').map((p) => p.replace(/\[\d+\]$/, ''));
      const named = e.field && (inputs[e.field] || inputs[aliases[e.field]]
        || parts.reverse().map((p) => inputs[p] || inputs[aliases[p]]).find(Boolean));
      if (named) {
        named.err.textContent = e.message;
        named.input.setAttribute('aria-invalid', 'true');
        named.input.focus();
      } else {
        formErr.textContent = e.code ? `${e.code}: ${e.message}` : String(e.message || e);
      }
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

/** An error shown in place of a section that could not be read. */
export function failure(e) {
  return h('p', { class: 'warning bad', role: 'alert' }, `${e.code || 'ERROR'}: ${e.message}`);
}

/** Unsigned number field value, or undefined when empty (protobuf's "absent"). */
export function num(v) {
  return v === '' || v === undefined ? undefined : Number(v);
}
