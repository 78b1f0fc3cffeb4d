/*
 * Who is signed in: the role and department GET /ops/config answered, or the one chosen.
 */
import { state } from './store.js';
import { auth } from './http.js';

const currentRole = () => (state.config && state.config.user ? state.config.user.role : auth.role);
/** A department's own code; null for every other role. */
export const ownDepartment = () => (state.config && state.config.user && state.config.user.role === 'department' ? state.config.user.department : null);

export const mayReadAudit = () => ['operator', 'auditor'].includes(currentRole());
