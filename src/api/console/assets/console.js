// The operator console: a login prompt until a token is given, then the panels, all of them
// refreshed every few seconds (the events list unless one of its rows is open). No data is
// requested without a token.

import { ApiError, session, takeTokenFromFragment } from './api.js';
import { showError } from './dom.js';
import { EventsPanel } from './events.js';
import {
  DeadLetterPanel, LagPanel, TerminatorPanel, loadFacets,
} from './ops.js';

const REFRESH_MS = 5000;

const login = document.getElementById('login');
const loginForm = document.getElementById('login-form');
const loginError = document.getElementById('login-error');
const consoleRoot = document.getElementById('console');
const signOutButton = document.getElementById('sign-out');
const refreshed = document.getElementById('refreshed');

let panels = null;
let eventsPanel = null;
let timer = null;

function showLogin(message) {
  window.clearTimeout(timer);
  timer = null;
  panels = null;
  consoleRoot.hidden = true;
  clearData();
  signOutButton.hidden = true;
  refreshed.textContent = '';
  login.hidden = false;
  showError(loginError, message);
  document.getElementById('token').focus();
}

/** Removes every figure a previous session drew, so nothing stays visible without a token. */
function clearData() {
  for (const node of consoleRoot.querySelectorAll('tbody, tfoot, dl, datalist')) {
    node.replaceChildren();
  }
  for (const node of consoleRoot.querySelectorAll('.muted, .error, #page-info')) {
    node.textContent = '';
  }
}

function refused(error) {
  session.clear();
  showLogin(`The token was refused: ${error.message}`);
}

async function refresh() {
  if (!panels) return;
  const results = await Promise.allSettled([
    panels.lag.refresh(), panels.deadLetters.refresh(), panels.terminator.refresh(),
    eventsPanel.refresh(),
  ]);
  if (!panels) return;
  const failures = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  const authFailure = failures.find((e) => e instanceof ApiError && e.isAuthentication);
  if (authFailure) {
    refused(authFailure);
    return;
  }
  const now = new Date().toISOString().slice(11, 19);
  refreshed.textContent = failures.length
    ? `Refresh failed at ${now}Z: ${failures[0].message}`
    : `Refreshed ${now}Z, every ${REFRESH_MS / 1000} s`;
  timer = window.setTimeout(refresh, REFRESH_MS);
}

function start() {
  login.hidden = true;
  showError(loginError, '');
  consoleRoot.hidden = false;
  signOutButton.hidden = false;
  panels = {
    lag: new LagPanel(consoleRoot),
    deadLetters: new DeadLetterPanel(consoleRoot),
    terminator: new TerminatorPanel(consoleRoot),
  };
  if (!eventsPanel) eventsPanel = new EventsPanel(consoleRoot, refused);
  eventsPanel.apply();
  loadFacets(consoleRoot).catch(() => {});
  refresh();
}

loginForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const input = document.getElementById('token');
  const token = input.value.trim();
  input.value = '';
  if (!token) return;
  session.set(token);
  start();
});

signOutButton.addEventListener('click', () => {
  session.clear();
  showLogin('');
});

const fromFragment = takeTokenFromFragment();
if (fromFragment) session.set(fromFragment);
if (session.token()) {
  start();
} else {
  showLogin('');
}
